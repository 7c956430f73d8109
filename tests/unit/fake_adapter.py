"""Where the scripted upstream was: it is ``tests/unit/providers/fake_adapter.py`` now.

Kept only for ``tests/unit/jobs/test_transitions.py`` and ``tests/api/test_list_cancel.py``,
which still import it from here; delete this file once their imports name the new module.
"""

from tests.unit.providers.fake_adapter import Script

__all__ = ["Script"]

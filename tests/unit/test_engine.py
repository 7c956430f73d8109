"""Where the engine's test helpers were: they are in ``tests/unit/jobs/support.py`` now.

Kept only for ``tests/unit/jobs/test_transitions.py`` and ``tests/api/test_list_cancel.py``,
which still import them from here; delete this file once their imports name the new module.
It holds no tests.
"""

from tests.unit.jobs.support import (
    MS,
    PENDING,
    SUCCESS,
    claim,
    due_claims,
    new_job,
    row,
    set_row,
    step,
)

__all__ = ["MS", "PENDING", "SUCCESS", "claim", "due_claims", "new_job", "row", "set_row", "step"]

"""The operators' console under ``/ops/``: server-rendered pages over ``app.ops``, the
functions ``chorus status``, ``chorus jobs`` and ``chorus accounts`` print.

Only operators get in (``app.console.auth``): a login of ``OPS_BASIC_AUTH``, and no page at
all (404) when that is unset. Tenants' API keys open nothing here.
"""

from __future__ import annotations

from app.console.views import blp

__all__ = ["blp"]

"""Upstream adapters: a thin module per upstream on a small base that owns the HTTP.

Adapters translate; they never touch the database or Celery. Retries, leases and state
changes belong to the job engine (``app.jobs.engine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.providers.base import AccountConfig, Adapter

# provider name → "module:Class". A settings-style map resolved lazily, so importing this
# package registers nothing and loads no adapter it does not need.
ADAPTERS: dict[str, str] = {
    "aimlapi": "app.providers.aimlapi:AimlapiAdapter",
    "apilaplas": "app.providers.apilaplas:ApilaplasAdapter",
    "minimax": "app.providers.minimax:MinimaxAdapter",
    "useapi": "app.providers.useapi:UseapiAdapter",
}


def get_adapter(account: AccountConfig) -> Adapter:
    try:
        dotted = ADAPTERS[account.provider]
    except KeyError:
        raise LookupError(f"no adapter for provider {account.provider!r}") from None
    module_name, _, class_name = dotted.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    adapter: Adapter = cls(account)
    return adapter

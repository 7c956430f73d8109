"""A tiny per-process cache for rows that change rarely (catalog models, accounts).

Catalog edits reach running processes within ``ttl`` seconds; that is the price of not
asking the database the same question on every request and every job step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from threading import Lock
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._lock = Lock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (now + self.ttl, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


# Free room under a cap, as last counted, below which every request is counted again.
SKIP_COUNT_HEADROOM = 256


def far_below_cap(cap: int, recent: Callable[[], int]) -> bool:
    """Whether ``recent()``, a count this process saw moments ago (a TTLCache entry), leaves
    at least half of ``cap`` (and ``SKIP_COUNT_HEADROOM``) free.

    Then one more request may skip the exact count: to overshoot, that many would have to
    arrive within the cache's lifetime. A small cap is always counted.
    """
    if cap < SKIP_COUNT_HEADROOM:
        return False
    return cap - recent() >= max(cap // 2, SKIP_COUNT_HEADROOM)

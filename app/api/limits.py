"""Per-key request rate limits, shared by every web process through Redis.

The counting is the ``limits`` library's fixed window (one Lua INCR per request in Redis).
It is called directly from one ``before_request`` hook: the Flask glue around it would
resolve, filter and scope the limits again on every request, and the API has exactly one
limit, a budget per key shared by every rate-limited route.

The key is a hash of the presented API key (never the key itself, which must not reach
Redis or logs); requests without one are limited by address.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

from flask import Flask, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from app.api.auth import presented_key
from app.api.errors import ApiError
from config import Settings

log = logging.getLogger(__name__)


def limit_key() -> str:
    presented = presented_key()
    if presented:
        return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


class RateLimit:
    """The per-key budget (``RATE_LIMIT``) of the blueprints named in ``blueprints``."""

    def __init__(self, settings: Settings, blueprints: set[str]) -> None:
        self.item: RateLimitItem = parse(settings.rate_limit)
        self.blueprints = blueprints
        # memory:// counts per process: right for the one-process embedded default only.
        self._uri = settings.redis_url or "memory://"
        self._scope = f"{settings.redis_prefix}api"
        self._limiter: FixedWindowRateLimiter | None = None
        self._lock = threading.Lock()

    @property
    def limiter(self) -> FixedWindowRateLimiter:
        # Built on first use, in the serving process: a connection pool made before
        # gunicorn forks would be shared by its workers.
        if self._limiter is None:
            with self._lock:
                if self._limiter is None:
                    options = (
                        {"socket_connect_timeout": 2, "socket_timeout": 2}
                        if self._uri.startswith("redis")
                        else {}
                    )
                    storage = storage_from_string(self._uri, wrap_exceptions=True, **options)
                    self._limiter = FixedWindowRateLimiter(storage)
        return self._limiter

    def check(self) -> None:
        """``before_request``: count this request against its key's budget, or refuse it."""
        if request.blueprint not in self.blueprints:
            return
        key = limit_key()
        try:
            allowed = self.limiter.hit(self.item, self._scope, key)
        except StorageError as exc:
            # Redis unreachable: serve rather than refuse every client.
            log.warning("rate limit not checked: %s", exc.storage_error)
            return
        if not allowed:
            raise ApiError(
                429,
                f"Rate limit reached: {self.item}. Slow down and retry later.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self._seconds_to_reset(key))},
            )

    def _seconds_to_reset(self, key: str) -> int:
        """Seconds until the key's window resets (at least 1), read only for a refusal."""
        try:
            reset_at = self.limiter.get_window_stats(self.item, self._scope, key).reset_time
        except StorageError:
            return 1
        return max(1, math.ceil(reset_at - time.time()))


def init_rate_limit(app: Flask, settings: Settings, blueprints: set[str]) -> RateLimit:
    rate_limit = RateLimit(settings, blueprints)
    # An app-level hook runs before the blueprints' own (the key check): an over-budget
    # client is refused without a database round trip.
    app.before_request(rate_limit.check)
    return rate_limit

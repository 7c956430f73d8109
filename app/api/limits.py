"""Per-key request rate limits, shared by every web process through Redis.

The count is kept by the ``limits`` library's storage as a fixed window per key. It is used
directly from one ``before_request`` hook: the Flask glue around it would resolve, filter
and scope the limits again on every request, and the API has exactly one limit, a budget
per key shared by every rate-limited route.

A process takes its requests from the budget in small blocks (a lease): one Redis round
trip per block instead of per request. The Redis count only ever grows by what was taken,
and a block is cut to what is left in the window, so the processes together never admit
more than the limit. What a process leased and did not use before the window ends is lost
to the others: a key can be refused up to (processes × (block − 1)) requests early. The
block is a hundredth of the limit (at most ``LEASE_MAX``), so a small limit (under 200 per
window) is counted request by request, exactly.

The key is a hash of the presented API key (never the key itself, which must not reach
Redis or logs); requests without one are limited by address.

A made-up key would otherwise come with a fresh budget of its own: every refused key also
counts against its address's budget of failures (the same limit), and an address that has
spent it is refused everything, valid keys included, until its window ends. Clients that
share an address with one guessing keys share its wait.

When Redis cannot be reached, a request this process holds no leased budget for is answered
503 with ``Retry-After``: the budget cannot be counted, so it is not spent blind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import cast

from flask import Flask, Response, g, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string

from app.api.auth import presented_key
from app.api.errors import ApiError
from config import Settings

log = logging.getLogger(__name__)

# The lease: a hundredth of the limit, at most this many requests per Redis round trip.
LEASE_FRACTION = 100
LEASE_MAX = 64
# Leases of windows that ended are dropped once this many keys are held.
LEASES_KEPT = 10_000


def failures_key() -> str:
    return "failed:" + (request.remote_addr or "unknown")


def limit_key() -> str:
    presented = presented_key()
    if presented:
        return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


@dataclass
class _Lease:
    left: int  # requests this process may still admit in the window
    until: float  # when the window ends (time.time())
    spent: bool  # the window's whole budget is taken: refuse until it ends


class RateLimit:
    """The per-key budget (``RATE_LIMIT``) of the blueprints named in ``blueprints``."""

    def __init__(self, settings: Settings, blueprints: set[str]) -> None:
        self.item: RateLimitItem = parse(settings.rate_limit)
        self.blueprints = blueprints
        self.block = max(1, min(LEASE_MAX, self.item.amount // LEASE_FRACTION))
        # memory:// counts per process: right for the one-process embedded default only.
        self._uri = settings.redis_url or "memory://"
        self._scope = f"{settings.redis_prefix}api"
        self._storage: Storage | None = None
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    @property
    def storage(self) -> Storage:
        # Built on first use, in the serving process: a connection pool made before
        # gunicorn forks would be shared by its workers.
        if self._storage is None:
            with self._lock:
                if self._storage is None:
                    options = (
                        {"socket_connect_timeout": 2, "socket_timeout": 2}
                        if self._uri.startswith("redis")
                        else {}
                    )
                    storage = storage_from_string(self._uri, wrap_exceptions=True, **options)
                    self._storage = cast(Storage, storage)  # a synchronous URI: never aio
        return self._storage

    def check(self) -> None:
        """``before_request``: count this request against its key's budget, or refuse it."""
        if request.blueprint not in self.blueprints:
            return
        barred = self.spent_until(failures_key())
        if barred is not None:
            raise _refused(barred, "Too many requests with an invalid API key from this address")
        try:
            allowed, until = self.take(limit_key())
        except StorageError as exc:
            # Redis unreachable: the budget cannot be counted, so nothing is admitted past it
            # (a made-up key would otherwise go unlimited for the whole outage). What this
            # process already leased is still served; the rest hear when to come back.
            log.warning("rate limit not checked: %s", exc.storage_error)
            raise ApiError(
                503,
                "The rate limiter is unavailable for a moment; retry.",
                code="unavailable",
                headers={"Retry-After": "1"},
            ) from exc
        if not allowed:
            raise _refused(until, f"Rate limit reached: {self.item}")

    def count_failure(self, response: Response) -> Response:
        """``after_request``: a refused API key takes one from its address's failures."""
        if g.get("key_refused"):
            try:
                self.take(failures_key())
            except StorageError as exc:
                log.warning("failed authentication not counted: %s", exc.storage_error)
        return response

    def spent_until(self, key: str) -> float | None:
        """When ``key``'s window ends, if this process saw its budget spent; else None."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or not lease.spent or lease.left > 0:
                return None
            return lease.until if lease.until > time.time() else None

    def take(self, key: str) -> tuple[bool, float]:
        """One request from ``key``'s budget: whether it is admitted, and when the window ends."""
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.until > now:
                if lease.left > 0:
                    lease.left -= 1
                    return True, lease.until
                if lease.spent:
                    return False, lease.until
        # The Redis round trips happen outside the lock; two threads may both lease for one
        # key at a window's edge, which only takes a block early.
        lease = self._lease(key, now)
        with self._lock:
            current = self._leases.get(key)
            if current is not None and current.until >= lease.until:
                # Another thread leased meanwhile: pool the two.
                current.left += lease.left
                current.spent = current.spent or lease.spent
                lease = current
            else:
                if len(self._leases) >= LEASES_KEPT:
                    self._leases = {k: v for k, v in self._leases.items() if v.until > now}
                self._leases[key] = lease
            if lease.left > 0:
                lease.left -= 1
                return True, lease.until
            return False, lease.until

    def _lease(self, key: str, now: float) -> _Lease:
        """Take up to a block from the shared count: what is left of it in this window."""
        counter = self.item.key_for(self._scope, key)
        count = self.storage.incr(counter, self.item.get_expiry(), amount=self.block)
        granted = max(0, min(self.block, self.item.amount - (count - self.block)))
        spent = count >= self.item.amount
        if count == self.block:
            # This lease opened the window.
            return _Lease(granted, now + self.item.get_expiry(), spent)
        if self.block == 1 and granted and not spent:
            return _Lease(1, now, False)  # used at once: when the window ends does not matter
        # The window began with another request, perhaps in another process: ask when it
        # ends. Redis answers in whole seconds; a second off the end keeps the lease inside.
        return _Lease(granted, self.storage.get_expiry(counter) - 1, spent)


def _refused(until: float, reason: str) -> ApiError:
    return ApiError(
        429,
        f"{reason}. Slow down and retry later.",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(until - time.time())))},
    )


def init_rate_limit(app: Flask, settings: Settings, blueprints: set[str]) -> RateLimit:
    rate_limit = RateLimit(settings, blueprints)
    # An app-level hook runs before the blueprints' own (the key check): an over-budget
    # client is refused without a database round trip.
    app.before_request(rate_limit.check)
    app.after_request(rate_limit.count_failure)
    return rate_limit

"""Per-key request rate limits, shared by every web process through Redis.

The key is a hash of the presented API key (never the key itself, which must not reach
Redis or logs); requests without one are limited by address.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from app.api.auth import presented_key
from app.api.errors import ApiError, error_response
from config import Settings


def limit_key() -> str:
    presented = presented_key()
    if presented:
        return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        key_func=limit_key,
        app=app,
        # memory:// counts per process: right for the one-process embedded default only.
        storage_uri=settings.redis_url or "memory://",
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        # One INCR per request; exact per window, which is all a per-key budget needs.
        strategy="fixed-window",
        key_prefix=settings.redis_prefix,
        # No X-RateLimit-* headers: they cost two more Redis round trips on every request.
        # A refused request still says when to come back (Retry-After, computed only then).
        headers_enabled=False,
        # Redis unreachable: serve rather than refuse every client.
        swallow_errors=True,
    )
    app.register_error_handler(RateLimitExceeded, _exceeded)
    return limiter


def _exceeded(error: RateLimitExceeded) -> Response:
    # In the body of the surface asked: AIMLAPI's clients read a 429 in AIMLAPI's shape.
    response = error_response(
        ApiError(
            429,
            f"Rate limit reached: {error.description}. Slow down and retry later.",
            code="rate_limit_exceeded",
        )
    )
    response.headers["Retry-After"] = str(_seconds_to_reset())
    return response


def _seconds_to_reset() -> int:
    """Seconds until the breached window resets (at least 1), read only for a refusal."""
    limiter: Limiter | None = next(iter(current_app.extensions.get("limiter", ())), None)
    current = limiter.current_limit if limiter is not None else None
    try:
        reset_at = current.reset_at if current is not None else None
    except Exception:  # noqa: BLE001 - Redis gone between the count and this read
        reset_at = None
    if not reset_at:
        return 1
    return max(1, math.ceil(reset_at - time.time()))

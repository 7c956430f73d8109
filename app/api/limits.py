"""Per-key request rate limits, shared by every web process through Redis.

The key is a hash of the presented API key (never the key itself, which must not reach
Redis or logs); requests without one are limited by address.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, request
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
        headers_enabled=True,
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
    retry_after = getattr(error, "retry_after", None)
    response.headers["Retry-After"] = str(int(retry_after)) if retry_after else "1"
    return response

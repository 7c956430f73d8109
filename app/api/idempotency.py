"""``@idempotent``: the ``Idempotency-Key`` header on a POST route (Stripe's model, IETF draft).

Put it above the route's other decorators, on a route whose blueprint authenticates the key
(``g.api_key``): keys are scoped per org. Errors it raises itself (400, 409, 422) are
``ApiError``s, rendered by whatever error handler the route's surface registers.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, request

from app.api.errors import ApiError
from app.extensions import chorus
from app.idempotency import store
from app.idempotency.models import MAX_KEY_LENGTH

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# The headers a replay repeats; the rest (rate limits, caching) belong to each answer.
KEPT_HEADERS = ("Content-Type", "Location", "Preference-Applied", "Retry-After")

F = TypeVar("F", bound=Callable[..., Any])


def idempotent(view: F) -> F:
    """Run ``view`` once per (org, key): replay its answer for a retry, refuse a reuse."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        raw = request.headers.get(HEADER)
        if raw is None:
            return current_app.make_response(view(*args, **kwargs))
        key = parse_key(raw)
        ext = chorus()
        settings = ext.settings
        outcome = store.claim(
            ext.db,
            g.api_key.org_id,
            key,
            fingerprint(),
            ttl=dt.timedelta(seconds=settings.idempotency_ttl_seconds),
            lock=dt.timedelta(seconds=settings.idempotency_lock_seconds),
        )
        if isinstance(outcome, store.Replay):
            response = Response(outcome.body, status=outcome.status_code)
            response.headers.update(outcome.headers)
            response.headers[REPLAYED] = "true"
            return response
        if isinstance(outcome, store.Busy):
            raise ApiError(
                409,
                f"A request with this {HEADER} is still being handled. Retry once it has "
                "answered: the retry gets the same answer.",
                param=HEADER,
                code="idempotency_key_in_use",
            )
        if isinstance(outcome, store.Mismatch):
            raise ApiError(
                422,
                f"This {HEADER} was already used for a different request (another body or "
                "route). Use a new key for a new request.",
                param=HEADER,
                code="idempotency_key_reused",
            )
        return _run(view, outcome, args, kwargs)

    return cast(F, wrapper)


def _run(
    view: Callable[..., Any], claimed: store.Claimed, args: Any, kwargs: dict[str, Any]
) -> Response:
    db = chorus().db
    try:
        response = current_app.make_response(view(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - handled by the app's handlers, or re-raised
        try:
            # The app's own error handlers turn a 4xx exception into its answer, which is
            # stored like any other; an exception with no handler is a fault (re-raised).
            response = current_app.make_response(current_app.handle_user_exception(exc))
        except Exception:
            store.release(db, claimed)
            raise
    if response.status_code >= 500 or response.status_code == 429:
        # Not the request's fault, and worth retrying with the same key: forget the claim.
        store.release(db, claimed)
        return response
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    try:
        stored = store.finish(db, claimed, response.status_code, response.get_data(), headers)
    except Exception:  # the request itself succeeded: its answer must go out
        log.warning("could not store the answer for an idempotency key", exc_info=True)
        stored = True
    if not stored:
        log.warning("an idempotency key's claim was taken over before its answer was stored")
    return response


def parse_key(raw: str) -> str:
    """The key, from Stripe's bare form or the IETF draft's structured-field string."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not value:
        raise ApiError(
            400, f"{HEADER} must not be empty.", param=HEADER, code="invalid_idempotency_key"
        )
    if len(value) > MAX_KEY_LENGTH:
        raise ApiError(
            400,
            f"{HEADER} must be at most {MAX_KEY_LENGTH} characters (got {len(value)}); a "
            "UUID is a good key.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    if not all(" " <= c <= "~" for c in value):
        raise ApiError(
            400,
            f"{HEADER} may hold only printable ASCII characters.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return value


def fingerprint() -> str:
    """Method, path and body: two requests that differ only in JSON spacing or key order match."""
    data = request.get_data(cache=True)
    try:
        body = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        body = data
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()

"""``@idempotent``: the ``Idempotency-Key`` header on a POST route (Stripe's model, IETF draft).

Put it above the route's other decorators, on a route whose blueprint authenticates the key
(``g.api_key``): keys are scoped per org. Errors it raises itself (400, 409, 422) are
``ApiError``s, rendered by whatever error handler the route's surface registers.

The key, the request's effect and its answer commit in one transaction, or not at all: a
process killed after writing a job and before storing the answer would otherwise let the
retry make a second job and a second charge. So a request with a key runs in this order:

1. the decorator reads the key (400 if malformed) and looks it up, read only: a finished
   request's answer is replayed, another request's use of the key is 422, a claim still
   unanswered is 409;
2. the view does everything that writes nothing first (headers, body, price and balance,
   reference audio), then, in one transaction: ``claim`` inserts the key (a concurrent
   request with the same key waits on it, then replays this one's answer), the view writes
   its effect and renders its answer, and ``commit`` stores the answer in the key's row and
   commits. A crash at any point before that commit leaves nothing; after it, the retry
   gets the stored answer;
3. an answer produced without a claim (a 4xx raised before any write, or a route whose
   effect commits on its own, as a cancel does) is stored by the decorator afterwards, in a
   transaction of its own;
4. an answer that changed after the commit (a ``Prefer: wait`` that saw the job end)
   replaces the stored one, so a later retry gets the answer the client was sent.

5xx and 429 answers are not stored: they are worth retrying afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, request

from app.api.errors import ApiError
from app.extensions import Chorus, chorus
from app.idempotency import store
from app.idempotency.models import MAX_KEY_LENGTH

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# The headers a replay repeats; the rest (rate limits, caching) belong to each answer.
KEPT_HEADERS = ("Content-Type", "Location", "Preference-Applied", "Retry-After")

F = TypeVar("F", bound=Callable[..., Any])
Answer = tuple[int, bytes, dict[str, str]]


@dataclass
class _Pending:
    """The request's key, and how far the request has come with it."""

    org_id: int
    key: str
    fingerprint: str
    claimed: store.Claimed | None = None
    committed: Answer | None = None  # the answer committed with the key


class _Replayed(Exception):
    """The key's first request has answered: its answer is this request's."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed")
        self.response = response


class KeyRefused(ApiError):
    """A 409 or 422 about the key itself: never stored as the key's answer."""


def idempotent(view: F) -> F:
    """Run ``view`` once per (org, key): replay its answer for a retry, refuse a reuse."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        raw = request.headers.get(HEADER)
        if raw is None:
            return current_app.make_response(view(*args, **kwargs))
        pending = _Pending(g.api_key.org_id, parse_key(raw), fingerprint())
        ext = chorus()
        with ext.db.reader.connect() as conn:
            known = store.lookup(conn, pending.org_id, pending.key, pending.fingerprint)
        if isinstance(known, store.Replay):
            return _replay(known)
        if known is not None:
            raise _refusal(known)
        g.idempotency = pending
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except _Replayed as replayed:
            return replayed.response
        except KeyRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - handled by the app's handlers, or re-raised
            # The app's own error handlers turn a 4xx exception into its answer, which is
            # stored like any other; an exception with no handler is a fault (re-raised).
            response = current_app.make_response(current_app.handle_user_exception(exc))
        finally:
            g.pop("idempotency", None)
        if response.status_code >= 500 or response.status_code == 429:
            # Not the request's fault, and worth retrying with the same key.
            return response
        if pending.committed is None:
            return _store_after(ext, pending, response)
        if pending.claimed is not None and _answer(response) != pending.committed:
            _revise(ext, pending.claimed, response)
        return response

    return cast(F, wrapper)


def claim(lock_seconds: float | None = None) -> bool:
    """Take the request's key in its open transaction, before its first write; False when
    the request has no key. Then ``commit`` must store the answer with the effect.

    ``lock_seconds``: at least this long before a claim left unanswered may be taken over,
    for a request that commits its claim before its answer (the lyrics call: a retry must
    not run it again while the first may still be under way).

    Raises what the key already holds: the first request's answer (the decorator replays
    it), or a refusal (409, 422).
    """
    pending: _Pending | None = g.get("idempotency")
    if pending is None:
        return False
    outcome = _claim(chorus(), pending, lock_seconds)
    if not isinstance(outcome, store.Claimed):
        raise _refusal(outcome)
    pending.claimed = outcome
    return True


def commit(response: Response) -> None:
    """Commit the request's transaction, with ``response`` stored as the answer of the key
    ``claim`` took in it."""
    ext = chorus()
    pending: _Pending | None = g.get("idempotency")
    answer = None
    if pending is not None and pending.claimed is not None:
        answer = _answer(response)
        if not store.record(ext.session(), pending.claimed, *answer):
            raise RuntimeError("the idempotency key's claim was lost inside its transaction")
    ext.commit()
    if pending is not None:
        pending.committed = answer


def abandon() -> None:
    """Drop the key ``claim`` took, in the request's open transaction (the caller commits):
    the request failed with an answer that is not stored (5xx), and a retry with the same
    key should run afresh rather than wait out the claim's lock."""
    pending: _Pending | None = g.get("idempotency")
    if pending is not None and pending.claimed is not None:
        store.drop(chorus().session(), pending.claimed)
        pending.claimed = None


def _claim(ext: Chorus, pending: _Pending, lock_seconds: float | None = None) -> store.Outcome:
    lock = max(ext.settings.idempotency_lock_seconds, lock_seconds or 0)
    return store.claim(
        ext.session(),
        pending.org_id,
        pending.key,
        pending.fingerprint,
        ttl=timedelta(seconds=ext.settings.idempotency_ttl_seconds),
        lock=timedelta(seconds=lock),
    )


def _answer(response: Response) -> Answer:
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return response.status_code, response.get_data(), headers


def _replay(outcome: store.Replay) -> Response:
    response = Response(outcome.body, status=outcome.status_code)
    response.headers.update(outcome.headers)
    response.headers[REPLAYED] = "true"
    return response


def _refusal(outcome: store.Outcome) -> Exception:
    if isinstance(outcome, store.Replay):
        return _Replayed(_replay(outcome))
    if isinstance(outcome, store.Mismatch):
        return KeyRefused(
            422,
            f"This {HEADER} was already used for a different request (another body or "
            "route). Use a new key for a new request.",
            param=HEADER,
            code="idempotency_key_reused",
        )
    return KeyRefused(
        409,
        f"A request with this {HEADER} is still being handled. Retry once it has "
        "answered: the retry gets the same answer.",
        param=HEADER,
        code="idempotency_key_in_use",
    )


def _store_after(ext: Chorus, pending: _Pending, response: Response) -> Response:
    """Store an answer the view gave without a claim, in a transaction of its own: a
    concurrent request's answer, stored first, wins (and is replayed here too)."""
    session = ext.session()
    session.rollback()  # whatever the view left uncommitted is not part of its answer
    outcome = _claim(ext, pending)
    if isinstance(outcome, store.Claimed):
        store.record(session, outcome, *_answer(response))
    session.commit()
    if isinstance(outcome, store.Replay):
        return _replay(outcome)
    return response


def _revise(ext: Chorus, claimed: store.Claimed, response: Response) -> None:
    try:
        with ext.db.transaction() as session:
            store.record(session, claimed, *_answer(response))
    except Exception:  # the stored answer stays the committed one, which is still true
        log.warning("could not store the final answer of an idempotency key", exc_info=True)


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

"""The statements behind ``Idempotency-Key``: look up, claim, record, purge.

A key is claimed and answered inside the transaction that makes the request's effect (the
job and its hold), so the three commit together or not at all:

- ``lookup`` (read-only, before any work) answers a retry of a finished request at once;
- ``claim`` INSERTs the key in the caller's transaction. Of two requests with one key, the
  second's INSERT waits on the unique (org, key) index until the first's transaction ends:
  committed, it finds the first's answer (replay); rolled back, it takes the key itself;
- ``record`` writes the answer into the claimed row, still in that transaction (and may
  later, in a transaction of its own, replace it with the answer finally sent).

A row is therefore committed with its answer. One committed ``in_progress`` all the same
(its answer never recorded) keeps the key busy until ``locked_until``, then may be taken
over.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.orm import Session

from app.db import Database, utcnow
from app.idempotency.models import DONE, IN_PROGRESS, IdempotencyKey

PURGE_BATCH = 5000
# A claim that keeps losing races to takeovers and purges gives up (Busy) after this many.
CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class Claimed:
    """This request holds the key in its open transaction: ``record`` its answer before the
    commit."""

    row_id: int
    token: str


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Busy:
    """Another request holds this key and has not answered yet."""


@dataclass(frozen=True)
class Mismatch:
    """The key was used for a different request."""


Outcome = Claimed | Replay | Busy | Mismatch

_COLUMNS = (
    IdempotencyKey.id,
    IdempotencyKey.fingerprint,
    IdempotencyKey.state,
    IdempotencyKey.status_code,
    IdempotencyKey.response_body,
    IdempotencyKey.response_headers,
    IdempotencyKey.locked_until,
    IdempotencyKey.expires_at,
)


def _row(executor: Session | Connection, org_id: int, key: str) -> Any:
    where = (IdempotencyKey.org_id == org_id, IdempotencyKey.key == key)
    return executor.execute(select(*_COLUMNS).where(*where)).first()


def _stale(row: Any, now: dt.datetime) -> bool:
    """An expired key is a new key; an unanswered claim past its lock was abandoned."""
    return bool(row.expires_at <= now or (row.state == IN_PROGRESS and row.locked_until <= now))


def _decide(row: Any, fingerprint: str) -> Replay | Busy | Mismatch:
    if row.fingerprint != fingerprint:
        return Mismatch()
    if row.state == IN_PROGRESS:
        return Busy()
    return Replay(
        int(row.status_code or 0), bytes(row.response_body or b""), row.response_headers or {}
    )


def lookup(
    executor: Session | Connection,
    org_id: int,
    key: str,
    fingerprint: str,
    now: dt.datetime | None = None,
) -> Replay | Busy | Mismatch | None:
    """What the key already says, read only; None when the request should run."""
    now = now or utcnow()
    row = _row(executor, org_id, key)
    if row is None or _stale(row, now):
        return None
    return _decide(row, fingerprint)


def claim(
    session: Session,
    org_id: int,
    key: str,
    fingerprint: str,
    *,
    ttl: dt.timedelta,
    lock: dt.timedelta,
    now: dt.datetime | None = None,
) -> Outcome:
    """Take the key in ``session``'s transaction, or say why not (replay, busy, mismatch).

    Nothing is committed here: the claim becomes visible with the caller's commit, together
    with its effect and its ``record``ed answer, and vanishes with a rollback.
    """
    now = now or utcnow()
    token = secrets.token_hex(16)
    fresh: dict[str, Any] = dict(
        fingerprint=fingerprint,
        state=IN_PROGRESS,
        claim_token=token,
        status_code=None,
        response_body=None,
        response_headers=None,
        created_at=now,
        locked_until=now + lock,
        expires_at=now + ttl,
    )
    for _ in range(CLAIM_ATTEMPTS):
        # Waits for a concurrent claim of the key to commit or roll back.
        row_id = session.scalar(
            upsert(IdempotencyKey)
            .values(org_id=org_id, key=key, **fresh)
            .on_conflict_do_nothing(index_elements=["org_id", "key"])
            .returning(IdempotencyKey.id)
        )
        if row_id is not None:
            return Claimed(int(row_id), token)
        row = _row(session, org_id, key)
        if row is None:
            continue  # purged since the INSERT looked: try again
        if not _stale(row, now):
            return _decide(row, fingerprint)
        # The guard repeats the test, so of two requests taking over, one wins; the other
        # reads the winner's row on its next turn.
        taken = session.scalar(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.id == row.id,
                or_(
                    IdempotencyKey.expires_at <= now,
                    and_(
                        IdempotencyKey.state == IN_PROGRESS,
                        IdempotencyKey.locked_until <= now,
                    ),
                ),
            )
            .values(**fresh)
            .returning(IdempotencyKey.id)
            .execution_options(synchronize_session=False)
        )
        if taken is not None:
            return Claimed(int(taken), token)
    return Busy()


def record(
    session: Session, claimed: Claimed, status_code: int, body: bytes, headers: dict[str, str]
) -> bool:
    """Store the answer in the claimed row. False if the claim is no longer this request's
    (nothing is written)."""
    result = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claimed.row_id, IdempotencyKey.claim_token == claimed.token)
        .values(state=DONE, status_code=status_code, response_body=body, response_headers=headers)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def drop(session: Session, claimed: Claimed) -> None:
    """Delete the claimed key in ``session``: its request failed in a way worth retrying
    afresh with the same key (an answer that is never stored)."""
    session.execute(
        delete(IdempotencyKey)
        .where(IdempotencyKey.id == claimed.row_id, IdempotencyKey.claim_token == claimed.token)
        .execution_options(synchronize_session=False)
    )


def purge_expired(db: Database, now: dt.datetime | None = None, batch: int = PURGE_BATCH) -> int:
    """Delete expired keys, a batch per transaction so no lock is held for long. Returns how many."""
    now = now or utcnow()
    total = 0
    while True:
        with db.transaction() as session:
            ids = select(IdempotencyKey.id).where(IdempotencyKey.expires_at <= now).limit(batch)
            result = session.execute(
                delete(IdempotencyKey)
                .where(IdempotencyKey.id.in_(ids.scalar_subquery()))
                .execution_options(synchronize_session=False)
            )
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        total += count
        if count < batch:
            return total

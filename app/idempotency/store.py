"""The statements behind ``Idempotency-Key``: claim, finish, release, purge.

Each runs in a short transaction of its own, committed before the route's handler starts or
after it ends, so a concurrent request with the same key sees the claim at once.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.db import Database, utcnow
from app.idempotency.models import DONE, IN_PROGRESS, IdempotencyKey

PURGE_BATCH = 5000


@dataclass(frozen=True)
class Claimed:
    """This request holds the key: run the handler, then ``finish`` or ``release``."""

    row_id: int
    token: str


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Busy:
    """Another request with this key is still being handled."""


@dataclass(frozen=True)
class Mismatch:
    """The key was used for a different request."""


Outcome = Claimed | Replay | Busy | Mismatch


def claim(
    db: Database,
    org_id: int,
    key: str,
    fingerprint: str,
    *,
    ttl: dt.timedelta,
    lock: dt.timedelta,
    now: dt.datetime | None = None,
) -> Outcome:
    """Take the key for this request, or say why not (replay, busy, another request)."""
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
    try:
        with db.transaction() as session:
            row_id = session.scalar(
                insert(IdempotencyKey)
                .values(org_id=org_id, key=key, **fresh)
                .returning(IdempotencyKey.id)
            )
        return Claimed(int(row_id or 0), token)
    except IntegrityError:
        pass  # the key exists: what it holds decides
    with db.transaction() as session:
        row = session.scalars(
            select(IdempotencyKey).where(IdempotencyKey.org_id == org_id, IdempotencyKey.key == key)
        ).one_or_none()
        if row is None:
            # Purged between our INSERT and this read: a retry will claim it.
            return Busy()
        stale = row.expires_at <= now or (row.state == IN_PROGRESS and row.locked_until <= now)
        if stale:
            # An expired key is a new key; an abandoned claim (its request died) is taken over.
            # The guard repeats the test, so of two requests taking over, one wins.
            taken = session.execute(
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
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return Claimed(row.id, token)
            return Busy()
        if row.fingerprint != fingerprint:
            return Mismatch()
        if row.state == IN_PROGRESS:
            return Busy()
        return Replay(
            int(row.status_code or 0), bytes(row.response_body or b""), row.response_headers or {}
        )


def finish(
    db: Database, claimed: Claimed, status_code: int, body: bytes, headers: dict[str, str]
) -> bool:
    """Store the answer. False if the claim was taken over meanwhile (nothing is written)."""
    with db.transaction() as session:
        result = session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.id == claimed.row_id,
                IdempotencyKey.claim_token == claimed.token,
                IdempotencyKey.state == IN_PROGRESS,
            )
            .values(
                state=DONE, status_code=status_code, response_body=body, response_headers=headers
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(db: Database, claimed: Claimed) -> None:
    """Forget the claim, so that a retry with the key runs the request afresh."""
    with db.transaction() as session:
        session.execute(
            delete(IdempotencyKey)
            .where(
                IdempotencyKey.id == claimed.row_id,
                IdempotencyKey.claim_token == claimed.token,
                IdempotencyKey.state == IN_PROGRESS,
            )
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

"""Hold, capture, release, top up: every change to a balance and its ledger entry together.

All functions work inside the caller's transaction, so a job's status change and its money
move commit or fail as one. Exactly-once is enforced twice over: the engine settles a job
only in the transaction that makes it terminal (a conditional UPDATE that succeeds once),
and the ledger's unique (job_id, kind) refuses a second capture or release anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.money.models import Balance, LedgerEntry

TOPUP, HOLD, CAPTURE, RELEASE, ADJUSTMENT = "topup", "hold", "capture", "release", "adjustment"


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def ensure_balance(session: Session, org_id: int, currency: str) -> None:
    session.execute(
        _insert(session)(Balance)
        .values(org_id=org_id, currency=currency, available=0, held=0, updated_at=utcnow())
        .on_conflict_do_nothing()
    )


def lock_balance(session: Session, org_id: int, currency: str) -> None:
    """Serialise the org's submits (the per-org job cap counts under this lock)."""
    ensure_balance(session, org_id, currency)
    session.execute(
        update(Balance)
        .where(Balance.org_id == org_id, Balance.currency == currency)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def hold(
    session: Session, *, org_id: int, currency: str, price: int, min_balance: int, job_id: str
) -> bool:
    """Take ``price`` from the available balance for ``job_id``; False when it is too low.

    One conditional UPDATE: concurrent submits queue on the row lock, and each sees the
    balance the previous one left, so the balance can never go below zero.
    """
    if not price and not min_balance:
        return True  # nothing to hold and no minimum to meet
    # No balance row at all is a zero balance: the UPDATE simply matches nothing.
    enough = [Balance.available >= price]
    if min_balance:
        # The seed platform's rule: the balance must exceed the model's minimum.
        enough.append(Balance.available > min_balance)
    now = utcnow()
    take = (
        update(Balance)
        .where(Balance.org_id == org_id, Balance.currency == currency, *enough)
        .values(available=Balance.available - price, held=Balance.held + price, updated_at=now)
    )
    if price and session.get_bind().dialect.name == "postgresql":
        # Every paid submit runs this: the balance UPDATE and its ledger entry go to the
        # database as one statement (a data-modifying CTE), one round trip instead of two.
        taken = take.returning(Balance.org_id).cte("taken")
        entry = (
            insert(LedgerEntry)
            .from_select(
                ["org_id", "currency", "kind", "amount", "job_amount", "job_id", "created_at"],
                select(
                    taken.c.org_id,
                    literal(currency),
                    literal(HOLD),
                    literal(-price),
                    literal(price),
                    literal(job_id),
                    literal(now, UTCDateTime()),
                ),
            )
            .add_cte(taken, nest_here=True)
        )
        return session.execute(entry).rowcount == 1  # type: ignore[attr-defined]
    result = session.execute(take.execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if price:
        session.execute(
            insert(LedgerEntry).values(
                org_id=org_id,
                currency=currency,
                kind=HOLD,
                amount=-price,
                job_amount=price,
                job_id=job_id,
                created_at=now,
            )
        )
    return True


def settle(session: Session, job_id: str, *, capture: bool) -> bool:
    """Capture (success) or release (failure, cancel) the job's hold, once. True if it moved."""
    held = session.execute(
        select(LedgerEntry.org_id, LedgerEntry.currency, LedgerEntry.job_amount)
        .where(LedgerEntry.job_id == job_id, LedgerEntry.kind == HOLD)
        # Locks the hold: a concurrent capture and release of one job queue here, and the
        # second then sees the first and does nothing.
        .with_for_update()
    ).first()
    if held is None:
        return False  # a free job: nothing was held
    org_id, currency, price = held
    settled = session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.job_id == job_id, LedgerEntry.kind.in_([CAPTURE, RELEASE]))
    )
    if settled:
        return False
    kind = CAPTURE if capture else RELEASE
    inserted = session.execute(
        _insert(session)(LedgerEntry)
        .values(
            org_id=org_id,
            currency=currency,
            kind=kind,
            amount=0 if capture else price,
            job_amount=price,
            job_id=job_id,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["job_id", "kind"])
    )
    if inserted.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(Balance)
        .where(Balance.org_id == org_id, Balance.currency == currency)
        .values(
            held=Balance.held - price,
            available=Balance.available + (0 if capture else price),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return True


def credit(
    session: Session,
    org_id: int,
    currency: str,
    amount: int,
    *,
    note: str | None = None,
    kind: str = TOPUP,
) -> int:
    """Add ``amount`` (negative for an adjustment down); returns the new available balance."""
    ensure_balance(session, org_id, currency)
    session.add(LedgerEntry(org_id=org_id, currency=currency, kind=kind, amount=amount, note=note))
    session.execute(
        update(Balance)
        .where(Balance.org_id == org_id, Balance.currency == currency)
        .values(available=Balance.available + amount, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(
        session.scalar(
            select(Balance.available).where(Balance.org_id == org_id, Balance.currency == currency)
        )
        or 0
    )


@dataclass(frozen=True)
class Totals:
    available: int
    held: int


def recompute(session: Session, org_id: int, currency: str) -> Totals:
    """The balance as the ledger alone says it is (for audits and tests)."""
    available = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.org_id == org_id, LedgerEntry.currency == currency
        )
    )
    settled = select(LedgerEntry.job_id).where(
        LedgerEntry.kind.in_([CAPTURE, RELEASE]), LedgerEntry.job_id.is_not(None)
    )
    held = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.job_amount), 0)).where(
            LedgerEntry.org_id == org_id,
            LedgerEntry.currency == currency,
            LedgerEntry.kind == HOLD,
            LedgerEntry.job_id.not_in(settled),
        )
    )
    return Totals(int(available or 0), int(held or 0))


def balance(session: Session, org_id: int, currency: str) -> Totals:
    row = session.execute(
        select(Balance.available, Balance.held).where(
            Balance.org_id == org_id, Balance.currency == currency
        )
    ).first()
    return Totals(int(row[0]), int(row[1])) if row else Totals(0, 0)

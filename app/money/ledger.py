"""Hold, capture, release, top up: every change to a balance and its ledger entry together.

All functions work inside the caller's transaction, so a job's status change and its money
move commit or fail as one. Exactly-once is enforced twice over: the engine settles a job
only in the transaction that makes it terminal (a conditional UPDATE that succeeds once),
and the ledger's unique (job_id, kind) refuses a second capture or release anyway.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import (
    CTE,
    BigInteger,
    Insert,
    Select,
    String,
    Table,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.money.models import Balance, LedgerEntry

# A statement ``with_hold`` wraps: an INSERT, or a SELECT of an INSERT's CTE.
InsertOrSelect = TypeVar("InsertOrSelect", Insert, Select[Any])

TOPUP, HOLD, CAPTURE, RELEASE, ADJUSTMENT = "topup", "hold", "capture", "release", "adjustment"


def ensure_balance(session: Session, org_id: int, currency: str) -> None:
    session.execute(
        upsert(Balance)
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
    now = utcnow()
    if price:
        # Every paid submit runs this: the balance UPDATE and its ledger entry go to the
        # database as one prebuilt statement (a data-modifying CTE), one round trip.
        statement = _HOLD_WITH_MINIMUM if min_balance else _HOLD
        params = hold_params(
            org_id=org_id,
            currency=currency,
            price=price,
            min_balance=min_balance,
            job_id=job_id,
            now=now,
        )
        return session.execute(statement, params).rowcount == 1  # type: ignore[attr-defined]
    # Only a minimum to meet (the seed platform's rule: the balance must exceed it), nothing
    # to take. No balance row at all is a zero balance: the UPDATE simply matches nothing.
    result = session.execute(
        update(Balance)
        .where(
            Balance.org_id == org_id,
            Balance.currency == currency,
            Balance.available > min_balance,
        )
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


_LEDGER_COLUMNS = ["org_id", "currency", "kind", "amount", "job_amount", "job_id", "created_at"]


def hold_params(
    *, org_id: int, currency: str, price: int, min_balance: int, job_id: str, now: dt.datetime
) -> dict[str, Any]:
    """The parameters of a statement made by ``with_hold`` (or of ``hold``'s own)."""
    return dict(
        hold_org_id=org_id,
        hold_currency=currency,
        hold_price=price,
        hold_kind=HOLD,
        hold_neg_price=-price,
        hold_min_balance=min_balance,
        hold_job_id=job_id,
        hold_now=now,
    )


def _taken(*, with_minimum: bool) -> CTE:
    """Postgres: take ``price`` from the balance, if it covers it; one row when it did."""
    table = cast(Table, Balance.__table__)
    enough = [table.c.available >= bindparam("hold_price")]
    if with_minimum:
        enough.append(table.c.available > bindparam("hold_min_balance"))
    return (
        update(table)
        .where(
            table.c.org_id == bindparam("hold_org_id"),
            table.c.currency == bindparam("hold_currency"),
            *enough,
        )
        .values(
            available=table.c.available - bindparam("hold_price"),
            held=table.c.held + bindparam("hold_price"),
            updated_at=bindparam("hold_now", type_=UTCDateTime()),
        )
        .returning(table.c.org_id)
        .cte("taken")
    )


def _entry(taken: CTE) -> Insert:
    """The hold's ledger entry, written only when ``taken`` took the money."""
    return insert(cast(Table, LedgerEntry.__table__)).from_select(
        _LEDGER_COLUMNS,
        select(
            taken.c.org_id,
            bindparam("hold_currency", type_=String()),
            bindparam("hold_kind", type_=String()),
            bindparam("hold_neg_price", type_=BigInteger()),
            bindparam("hold_price", type_=BigInteger()),
            bindparam("hold_job_id", type_=String()),
            bindparam("hold_now", type_=UTCDateTime()),
        ),
    )


def with_hold(
    insert_from: Callable[[CTE], InsertOrSelect], *, with_minimum: bool
) -> InsertOrSelect:
    """Postgres: ``insert_from(taken)``, an INSERT … SELECT … FROM ``taken`` (or a SELECT of
    such an INSERT's CTE), as one statement
    with the hold, parameters from ``hold_params``. It inserts its row only where the balance
    covered the price, and then with the hold's ledger entry: a statement run alone in
    autocommit is its own transaction, so the row and its money commit together or not at all.

    Parameter names are not column names: a parameter named like a column of an UPDATE or
    INSERT would become a value of it.
    """
    taken = _taken(with_minimum=with_minimum)
    # Postgres allows a data-modifying CTE only at the top level of the statement.
    return insert_from(taken).add_cte(taken, _entry(taken).cte("entry"), nest_here=True)


def _hold_statement(*, with_minimum: bool) -> Insert:
    """The Postgres hold alone: take ``price`` from the balance and write its ledger entry."""
    taken = _taken(with_minimum=with_minimum)
    return _entry(taken).add_cte(taken, nest_here=True)


_HOLD = _hold_statement(with_minimum=False)
_HOLD_WITH_MINIMUM = _hold_statement(with_minimum=True)


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
        upsert(LedgerEntry)
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


@dataclass(frozen=True)
class Held:
    """What is held in one currency, as the ledger's open holds (holds minus their captures
    and releases) and as the balances' ``held`` column say: equal unless money drifted."""

    ledger: int
    balances: int


def held_totals(session: Session) -> dict[str, Held]:
    """``Held`` per currency, in two aggregate queries."""
    signed = case((LedgerEntry.kind == HOLD, LedgerEntry.job_amount), else_=-LedgerEntry.job_amount)
    ledger: dict[str, int] = dict(
        session.execute(
            select(LedgerEntry.currency, func.coalesce(func.sum(signed), 0))
            .where(LedgerEntry.kind.in_([HOLD, CAPTURE, RELEASE]))
            .group_by(LedgerEntry.currency)
        ).all()
    )
    balances = dict(
        session.execute(
            select(Balance.currency, func.coalesce(func.sum(Balance.held), 0)).group_by(
                Balance.currency
            )
        ).all()
    )
    return {
        currency: Held(ledger=int(ledger.get(currency, 0)), balances=int(balances.get(currency, 0)))
        for currency in sorted(set(ledger) | set(balances))
    }

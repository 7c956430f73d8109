"""Balances and the append-only ledger they can always be recomputed from."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Balance(Base):
    """An org's money in one currency, in integer minor units (cents, fen).

    ``available`` is what new jobs may hold; ``held`` is promised to jobs still running. The
    row is also the lock every submit of the org takes, which is what keeps concurrent holds
    from overdrawing it.
    """

    __tablename__ = "balances"

    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LedgerEntry(Base):
    """One movement of money; never updated or deleted.

    ``amount`` is its effect on ``available``: top-up +, hold −, release +, capture 0 (the
    held money becomes spent), adjustment ±. ``job_amount`` is the job's price on holds,
    captures and releases. A job has at most one entry of each kind: the database enforces
    exactly-once capture and release, whatever the workers do.
    """

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("job_id", "kind"),
        Index("ix_ledger_org_created", "org_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    job_amount: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

"""Upstream accounts as an operator sees them, and the switches an operator pulls.

``enabled`` is the catalog's column: a disabled account takes no new jobs (jobs it holds are
still followed to their end). Loading the catalog again sets it from the file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.catalog.models import AccountState, UpstreamAccount
from app.db import utcnow
from app.jobs.accounts import holds_slot
from app.jobs.models import Job


@dataclass(frozen=True)
class AccountView:
    id: str
    provider: str
    enabled: bool
    in_flight: int
    max_in_flight: int
    breaker: str  # "closed", "open" or "probing"
    failures: int
    open_until: dt.datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "open_until": self.open_until.isoformat() if self.open_until else None,
        }


class UnknownAccount(LookupError):
    pass


def breaker_state(state: AccountState | None, now: dt.datetime) -> str:
    if state is None or state.open_until is None:
        return "closed"
    return "open" if state.open_until > now else "probing"


def list_accounts(session: Session, now: dt.datetime | None = None) -> list[AccountView]:
    now = now or utcnow()
    in_flight = dict(
        session.execute(
            select(Job.account_id, func.count())
            .where(Job.account_id.is_not(None), holds_slot())
            .group_by(Job.account_id)
        ).all()
    )
    states = {s.account_id: s for s in session.scalars(select(AccountState))}
    views = []
    for account in session.scalars(select(UpstreamAccount).order_by(UpstreamAccount.id)):
        state = states.get(account.id)
        views.append(
            AccountView(
                id=account.id,
                provider=account.provider,
                enabled=account.enabled,
                in_flight=int(in_flight.get(account.id, 0)),
                max_in_flight=account.max_in_flight,
                breaker=breaker_state(state, now),
                failures=state.failures if state else 0,
                open_until=state.open_until if state else None,
            )
        )
    return views


def set_enabled(session: Session, account_id: str, enabled: bool) -> None:
    done = session.execute(
        update(UpstreamAccount).where(UpstreamAccount.id == account_id).values(enabled=enabled)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise UnknownAccount(account_id)


def reset_breaker(session: Session, account_id: str) -> bool:
    """Close the account's breaker at once; True when it was open or counting failures."""
    if session.get(UpstreamAccount, account_id) is None:
        raise UnknownAccount(account_id)
    done = session.execute(
        update(AccountState)
        .where(
            AccountState.account_id == account_id,
            (AccountState.failures > 0)
            | AccountState.open_until.is_not(None)
            | AccountState.probe_until.is_not(None),
        )
        .values(failures=0, open_until=None, probe_until=None, updated_at=utcnow())
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]

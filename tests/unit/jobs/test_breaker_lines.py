"""The circuit breaker's log lines (app/jobs/accounts.py): one when it opens, one per probe it
lets through, one when a success closes it; none while the account is healthy."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from app.catalog.models import AccountState
from app.db import Database, utcnow
from app.jobs.accounts import BREAKER_THRESHOLD, Accounts


def breaker_lines(caplog: pytest.LogCaptureFixture, account: str) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.breaker)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "app.jobs.accounts" and getattr(r, "account", None) == account
    ]


def test_the_breaker_says_when_it_opens_lets_a_probe_through_and_closes(
    db: Database, catalog: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="app.jobs.accounts")
    account = catalog["accounts"][0]["id"]
    accounts = Accounts(db)

    opened = [accounts.record_failure(account) for _ in range(BREAKER_THRESHOLD)]
    assert opened == [False] * (BREAKER_THRESHOLD - 1) + [True]
    assert breaker_lines(caplog, account) == [("WARNING", "open")]
    (line,) = [r for r in caplog.records if r.name == "app.jobs.accounts"]
    assert line.getMessage() == (
        f"circuit breaker opened for upstream account {account} after {BREAKER_THRESHOLD} failure(s)"
    )

    # The cool-down over, one caller may probe; a second one at once may not.
    with db.transaction() as session:
        session.execute(
            update(AccountState)
            .where(AccountState.account_id == account)
            .values(open_until=utcnow())
        )
    with db.transaction() as session:
        assert accounts._take_probe(session, account, utcnow())
        assert not accounts._take_probe(session, account, utcnow())
    assert breaker_lines(caplog, account)[1:] == [("INFO", "half_open")]

    accounts.record_success(account)
    assert breaker_lines(caplog, account)[2:] == [("INFO", "closed")]

    # Healthy now: more successes, and a lone failure, say nothing.
    accounts._healthy_until.clear()
    accounts.record_success(account)
    accounts.record_failure(account)
    accounts.record_success(account)
    assert len(breaker_lines(caplog, account)) == 3

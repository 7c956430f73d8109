"""Choosing the account for a job (app.jobs.upstreams): none enabled, and the in-flight cap."""

from __future__ import annotations

import pytest
from sqlalchemy import event, update

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from config import Settings
from tests.unit.jobs.support import (
    assert_failed,
    new_job,
    row,
    step,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ no account enabled


def test_no_enabled_account_fails_no_upstream_without_a_call(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    from app.catalog.models import UpstreamAccount

    job_id = new_job(db, settings)
    with db.transaction() as session:
        session.execute(update(UpstreamAccount).values(enabled=False))

    assert step(engine, db, job_id) == "failed"

    assert script.calls == []
    assert_failed(row(db, job_id), "no_upstream")


# ------------------------------------------------------------------ an account's in-flight cap


def test_an_account_far_below_its_cap_takes_slots_without_its_lock(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    """Far below an account's cap a submit skips the account lock and the count; a small
    cap is counted under the lock every time, and refuses the submit over it."""
    from app.catalog.models import UpstreamAccount

    def account_locks(job_id: str) -> int:
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            step(engine, db, job_id)
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        return sum(s.lstrip().upper().startswith("UPDATE UPSTREAM_ACCOUNTS") for s in statements)

    with db.transaction() as session:
        session.execute(update(UpstreamAccount).values(max_in_flight=100_000))
    assert account_locks(new_job(db, settings)) == 0
    assert account_locks(new_job(db, settings)) == 0

    with db.transaction() as session:
        session.execute(update(UpstreamAccount).values(max_in_flight=3))
    assert account_locks(new_job(db, settings)) >= 1  # the third job in flight: counted
    full = new_job(db, settings)
    assert account_locks(full) >= 1
    assert row(db, full).status == JobStatus.QUEUED and row(db, full).waiting_since is not None
    assert len(script.submits) == 3

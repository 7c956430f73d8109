"""An account's circuit breaker (app.jobs.accounts) as submits meet it: it counts failing jobs,
not failing calls, so one job whose submits keep failing cannot open it alone; and it never
holds a healthy job back longer than one probe interval (15 s).
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from app.catalog.models import AccountState
from app.db import Database, utcnow
from app.jobs.accounts import BREAKER_THRESHOLD, PROBE_INTERVAL
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from config import Settings
from tests.unit.jobs.support import new_job, row, step, unavailable
from tests.unit.providers.fake_adapter import Script

pytestmark = [
    pytest.mark.usefixtures("catalog", "api_key"),
    pytest.mark.env(SUBMIT_MAX_ATTEMPTS="20"),
]
ACCOUNT = "sim-aimlapi"  # music-2.6's only route in the default catalog


def breaker(db: Database) -> AccountState | None:
    with db.session() as session:
        return session.get(AccountState, ACCOUNT)


def end_cool_down(db: Database) -> None:
    with db.transaction() as session:
        session.execute(
            sa.update(AccountState)
            .where(AccountState.account_id == ACCOUNT)
            .values(open_until=utcnow() - dt.timedelta(seconds=1))
        )


def open_with_distinct_jobs(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> list[str]:
    """Open the breaker: BREAKER_THRESHOLD jobs fail once each (made one at a time: a sweep
    leases every job due)."""
    jobs = []
    for _ in range(BREAKER_THRESHOLD):
        job_id = new_job(db, settings)
        script.on_submit(unavailable())
        assert step(engine, db, job_id) == "retry"
        jobs.append(job_id)
    return jobs


def test_one_job_failing_again_and_again_never_opens_the_breaker(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    poisoned = new_job(db, settings)
    script.on_submit(*[unavailable() for _ in range(BREAKER_THRESHOLD + 2)])

    outcomes = [step(engine, db, poisoned) for _ in range(BREAKER_THRESHOLD + 2)]

    assert outcomes == ["retry"] * (BREAKER_THRESHOLD + 2)
    state = breaker(db)
    assert state is not None
    assert (state.failures, state.open_until) == (1, None)
    # Another tenant's job on the same account goes straight through.
    healthy = new_job(db, settings)
    assert step(engine, db, healthy) == "running"
    assert row(db, healthy).account_id == ACCOUNT


def test_failures_of_different_jobs_open_it_for_one_probe_interval(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    before = utcnow()
    open_with_distinct_jobs(engine, script, db, settings)

    state = breaker(db)
    assert state is not None and state.open_until is not None
    assert before < state.open_until <= utcnow() + PROBE_INTERVAL
    # A job meanwhile waits QUEUED, to be looked at again when the probe may go.
    waiting = new_job(db, settings)
    assert step(engine, db, waiting) == "waiting"
    job = row(db, waiting)
    assert job.status == JobStatus.QUEUED
    assert job.next_action_at == state.open_until
    assert len(script.submits) == BREAKER_THRESHOLD


def test_a_probe_by_a_job_that_failed_before_frees_the_probe_for_another(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    jobs = open_with_distinct_jobs(engine, script, db, settings)
    end_cool_down(db)
    opened_until = breaker(db).open_until  # type: ignore[union-attr]

    # The first job due after the cool-down is one that failed here already, and fails again.
    script.on_submit(unavailable())
    assert step(engine, db, jobs[0]) == "retry"
    state = breaker(db)
    assert state is not None
    assert (state.open_until, state.probe_until) == (opened_until, None)

    # So a healthy job probes at once, and its success closes the breaker.
    healthy = new_job(db, settings)
    assert step(engine, db, healthy) == "running"
    state = breaker(db)
    assert state is not None
    assert (state.failures, state.open_until, state.probe_until) == (0, None, None)


def test_a_job_that_finds_the_probe_taken_waits_no_longer_than_the_probe_window(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    open_with_distinct_jobs(engine, script, db, settings)
    end_cool_down(db)

    def probing_meanwhile(_request: object) -> None:
        # While the probe's call is out, another job looks at the account.
        later = new_job(db, settings)
        assert step(engine, db, later) == "waiting"
        probe_until = breaker(db).probe_until  # type: ignore[union-attr]
        assert probe_until is not None and probe_until <= utcnow() + PROBE_INTERVAL
        assert row(db, later).next_action_at == probe_until
        raise unavailable()

    script.on_submit(probing_meanwhile)
    # A fresh job takes the probe and fails: the breaker opens again for one interval.
    assert step(engine, db, new_job(db, settings)) == "retry"
    state = breaker(db)
    assert state is not None and state.open_until is not None
    assert state.open_until <= utcnow() + PROBE_INTERVAL

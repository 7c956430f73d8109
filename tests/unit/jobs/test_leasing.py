"""Leases on job rows (app.jobs.leasing): one sweep leases due jobs, a lease holds while its
upstream call is in flight (renewed, however long the call), and ``next_due`` says when the
scheduler must look again.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import event

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.leasing import Received
from app.jobs.status import JobStatus
from app.providers.base import Submission
from config import Settings
from tests.unit.jobs.support import (
    MS,
    claim,
    claimed,
    new_job,
    row,
    set_row,
    step,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ leases


def test_a_leased_job_is_not_claimed_again_until_the_lease_expires(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    first = claim(engine, job_id)
    lease_until = row(db, job_id).lease_until
    assert lease_until is not None

    assert not claimed(engine, job_id)
    assert not claimed(engine, job_id, now=lease_until - MS)
    # Claiming it again needs a lease that has run out, and hands out a different token.
    second = claim(engine, job_id, now=lease_until + dt.timedelta(seconds=1))
    assert second != first
    assert row(db, job_id).lease_token == second

    assert engine.advance(job_id, first) == "skipped"
    assert script.calls == []
    assert engine.advance(job_id, second) == "running"
    assert len(script.submits) == 1


def test_the_lease_holds_while_the_upstream_call_is_in_flight(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    seen: list[bool] = []

    def sweep_meanwhile(_request: Any) -> Submission:
        # Sweeps while the worker waits on the upstream, up to just before the lease ends (read
        # from the row: on a loaded machine the call may start well after the claim).
        seen.append(claimed(engine, job_id))
        lease_until = row(db, job_id).lease_until
        assert lease_until is not None
        seen.append(claimed(engine, job_id, now=lease_until - MS))
        return Submission("gen-slow")

    script.on_submit(sweep_meanwhile)
    assert step(engine, db, job_id) == "running"
    assert seen == [False, False]
    assert row(db, job_id).generation_id == "gen-slow"
    assert len(script.submits) == 1


# ------------------------------------------------------------------ a lease is renewed while its step runs


@pytest.mark.env(LEASE_SECONDS="2")
def test_a_step_outlasting_its_lease_keeps_its_job_while_it_runs(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    sweeps: list[bool] = []

    def answer_after_several_leases(_request: Any) -> Submission:
        # The scheduler sweeps on the real clock while the upstream holds the call for two
        # and a half leases: the worker's renewals keep the job its own.
        until = time.monotonic() + 2.5 * engine.lease.total_seconds()
        while time.monotonic() < until:
            sweeps.append(claimed(engine, job_id))
            time.sleep(0.1)
        return Submission("gen-slow")

    script.on_submit(answer_after_several_leases)
    assert step(engine, db, job_id) == "running"
    assert len(sweeps) > 20 and not any(sweeps)
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING and job.generation_id == "gen-slow"
    assert len(script.submits) == 1
    # Its step over, nothing renews it: a job between two looks holds no lease at all.
    assert job.lease_token is None and engine.leases.renewals.held() == []


def test_a_renewal_extends_only_the_leases_still_held_and_never_shortens_one(
    engine: Engine, db: Database, settings: Settings
) -> None:
    held, taken_over, long_call = (new_job(db, settings) for _ in range(3))
    assert len(engine.claim_due(lookahead=0.0, limit=100)) == 3
    now = utcnow()
    for job_id in (held, taken_over, long_call):
        set_row(db, job_id, lease_until=now + MS)
    set_row(db, long_call, lease_until=now + dt.timedelta(minutes=10))
    jobs = [row(db, job_id) for job_id in (held, taken_over, long_call)]
    # Another holder took this one over (its lease had lapsed): our token no longer holds it.
    set_row(db, taken_over, lease_token="someone-else")

    with engine.leases.renewals.holding(jobs):
        assert engine.leases.renewals.renew() == 2
    assert row(db, held).lease_until >= now + engine.lease
    assert row(db, taken_over).lease_until == now + MS
    assert row(db, long_call).lease_until == now + dt.timedelta(minutes=10)
    assert engine.leases.renewals.held() == []
    assert engine.leases.renewals.renew() == 0


def test_leases_that_lapsed_while_the_database_was_away_get_one_lease_more(
    engine: Engine, db: Database, settings: Settings
) -> None:
    during, before, ahead = (new_job(db, settings) for _ in range(3))
    assert len(engine.claim_due(lookahead=0.0, limit=100)) == 3
    now = utcnow()
    outage_began = now - dt.timedelta(seconds=30)
    # Lapsed during the outage (its holder could not renew it), long before it (its holder
    # died then), and one that still runs for minutes.
    set_row(db, during, lease_until=now - dt.timedelta(seconds=20))
    set_row(db, before, lease_until=outage_began - engine.lease - dt.timedelta(minutes=5))
    set_row(db, ahead, lease_until=now + dt.timedelta(minutes=10))
    tokens = {job_id: row(db, job_id).lease_token for job_id in (during, before, ahead)}

    assert engine.forgive_outage(outage_began) == 1
    assert now + engine.lease <= row(db, during).lease_until <= utcnow() + engine.lease
    # The one whose holder died is claimed again; the one lapsed during the outage waits for
    # its holder, who still has it under the same token.
    swept = {c.job_id for c in engine.claim_due(lookahead=0.0, limit=100)}
    assert swept == {before}
    assert row(db, during).lease_token == tokens[during]
    assert row(db, ahead).lease_until == now + dt.timedelta(minutes=10)


class ByHand(Received):
    """A worker's received claims, renewed only when the test says: the thread a worker runs
    would renew them meanwhile, and a renewal skips the rows another one has locked."""

    def _ensure_thread(self) -> None:
        pass


def test_a_received_claim_gets_a_renewed_lease_until_a_step_takes_it(
    engine: Engine, db: Database, settings: Settings
) -> None:
    first, second = new_job(db, settings), new_job(db, settings)
    claims = engine.claim_due(lookahead=0.0, limit=100)
    # Claimed: leased for as long as a message may wait in the broker.
    assert row(db, first).lease_until > utcnow() + 2 * engine.lease
    received = ByHand(db, engine.lease)
    received.add((c.job_id, c.token) for c in claims)
    assert received.renew() == 2
    # A living worker has the messages: a lease from now, renewed while they wait.
    now = utcnow()
    for job_id in (first, second):
        assert now < row(db, job_id).lease_until <= now + engine.lease
    # A step took the first (a fresh token): it leaves the set, its lease the step's.
    taken = engine.leases.take(first, next(c.token for c in claims if c.job_id == first))
    assert taken is not None
    assert received.renew() == 1
    assert received.claims() == [(second, row(db, second).lease_token)]
    assert row(db, first).lease_until == taken.lease_until


def test_a_received_claim_no_step_takes_is_let_go_after_a_claim_lease(
    engine: Engine, db: Database, settings: Settings
) -> None:
    from app.jobs.leasing import CLAIM_LEASES

    job_id = new_job(db, settings)
    (claim,) = engine.claim_due(lookahead=0.0, limit=100)
    lease = dt.timedelta(seconds=0.2)
    received = ByHand(db, lease)
    received.add([(claim.job_id, claim.token)])
    assert received.claims() == [(job_id, claim.token)]
    # Its task failed before taking the job, say: the worker lives, but lets the job go.
    time.sleep(CLAIM_LEASES * lease.total_seconds() + 0.1)
    assert received.claims() == []
    assert received.renew() == 0


# ------------------------------------------------------------------ one sweep, one statement


def test_a_sweep_leases_its_jobs_with_one_statement(
    engine: Engine, db: Database, settings: Settings
) -> None:
    jobs = [new_job(db, settings) for _ in range(3)]
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(db.engine, "before_cursor_execute", seen)
    claims = engine.claim_due(lookahead=0, limit=100)
    event.remove(db.engine, "before_cursor_execute", seen)

    assert sorted(c.job_id for c in claims) == sorted(jobs)
    assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE JOBS")]) == 1
    # One token for the sweep; each claim still names its job, and only its holder proceeds.
    assert len({c.token for c in claims}) == 1
    assert all(row(db, j).lease_token == claims[0].token for j in jobs)
    assert engine.claim_due(lookahead=0, limit=100) == []


# ------------------------------------------------------------------ what the scheduler sleeps until


def test_next_due_is_the_earliest_look_lease_end_or_deadline(
    engine: Engine, db: Database, settings: Settings
) -> None:
    assert engine.next_due() is None  # nothing waiting: sleep until the safety cap
    now = utcnow()
    later, soon = new_job(db, settings), new_job(db, settings)
    set_row(db, later, next_action_at=now + dt.timedelta(seconds=50))
    set_row(db, soon, next_action_at=now + dt.timedelta(seconds=20))
    assert engine.next_due() == now + dt.timedelta(seconds=20)
    # Leased: not due again before its lease ends (should its holder die), even though its
    # next look has come.
    set_row(
        db, soon, next_action_at=now, lease_token="t", lease_until=now + dt.timedelta(seconds=40)
    )
    assert engine.next_due() == now + dt.timedelta(seconds=40)
    # A deadline sooner than any look: the scheduler must wake to fail the job.
    set_row(db, later, deadline_at=now + dt.timedelta(seconds=30))
    assert engine.next_due() == now + dt.timedelta(seconds=30)
    # Ended jobs wait for nothing.
    set_row(
        db,
        soon,
        status=JobStatus.SUCCEEDED,
        next_action_at=None,
        lease_token=None,
        lease_until=None,
    )
    set_row(db, later, status=JobStatus.FAILED, next_action_at=None)
    assert engine.next_due() is None

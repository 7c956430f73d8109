"""The job engine (app.jobs.engine) against a real Postgres and a scripted upstream.

A claim is advanced once whatever the tokens and copies of its message, ``advance_many`` runs
claims together, unexpected faults release the job, and ``expire_overdue`` ends what is past
its deadline. No HTTP, no Celery; the shared set-up is in ``tests/unit/jobs/support.py``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from typing import Any

import pytest

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from app.providers.base import Submission
from config import Settings
from tests.unit.jobs.support import (
    BODY,
    MS,
    PENDING,
    SUCCESS,
    WAV,
    assert_failed,
    assert_released,
    claim,
    claimed,
    new_job,
    row,
    running_job,
    set_row,
    snapshot,
    step,
    stored_files,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ the happy path


def test_happy_path_submit_poll_pending_then_success(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_poll(PENDING, SUCCESS)

    token = claim(engine, job_id)
    leased = row(db, job_id)
    assert leased.lease_token == token
    assert leased.lease_until is not None and leased.lease_until > utcnow()

    before = utcnow()
    assert engine.advance(job_id, token) == "running"
    after = utcnow()

    [call] = script.submits
    assert call.arg.upstream_model == "minimax/music-2.6"
    assert call.arg.prompt == BODY["prompt"]
    assert call.arg.lyrics == BODY["lyrics"]
    assert call.account.id == "sim-aimlapi"
    assert call.account.provider == "aimlapi"
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-1"
    assert job.provider == "aimlapi"
    assert job.account_id == "sim-aimlapi"
    assert job.submit_attempts == 1
    assert job.submitting_since is None
    assert job.started_at is not None and before <= job.started_at <= after
    assert_released(job)
    # The first poll is scheduled by the policy from the model's expected time (0.6 ± 0.2 s).
    delay = engine.policy.next_delay(0.0, 0.6, 0.2)
    assert delay > 0
    assert job.next_action_at is not None
    assert abs((job.next_action_at - job.started_at).total_seconds() - delay) < 0.001
    assert not claimed(engine, job_id, now=job.next_action_at - 100 * MS)

    # Due: the poll answers PENDING, so the job is rescheduled and the poll counted.
    token = claim(engine, job_id, now=job.next_action_at)
    before = utcnow()
    assert engine.advance(job_id, token) == "pending"
    after = utcnow()
    job = row(db, job_id)
    assert [c.arg for c in script.polls] == ["gen-1"]
    assert job.status == JobStatus.RUNNING
    assert job.poll_count == 1
    assert job.invalid_responses == 0
    assert_released(job)
    assert job.next_action_at is not None
    assert before < job.next_action_at <= after + dt.timedelta(seconds=settings.poll_max_interval)

    # Due again: success, and Chorus keeps its own copy of the audio.
    token = claim(engine, job_id, now=job.next_action_at)
    before = utcnow()
    assert engine.advance(job_id, token) == "succeeded"
    job = row(db, job_id)
    assert [c.arg for c in script.polls] == ["gen-1", "gen-1"]
    assert job.status == JobStatus.SUCCEEDED
    # A key of its own per attempt: <job id>-<random>.wav
    assert re.fullmatch(rf"{job_id}-[0-9a-f]{{8}}\.wav", job.audio_key or "")
    path = settings.storage_dir / job.audio_key
    assert path.is_file()
    assert path.read_bytes() == WAV
    assert stored_files(settings) == [job.audio_key]  # no temp file left behind
    assert job.audio_format == "wav"
    assert job.audio_sample_rate == 8000
    assert job.audio_channels == 1
    assert job.audio_bitrate == 128000
    assert job.audio_duration_ms == 500
    assert job.audio_size == len(WAV)
    assert job.finished_at is not None and job.finished_at >= before
    assert job.poll_count == 2
    assert job.error_code is None and job.error_message is None
    assert job.next_action_at is None
    assert_released(job)
    # Done means done: nothing claims it again, and one adapter served every call.
    assert engine.claim_due(lookahead=0, limit=100, now=utcnow() + dt.timedelta(days=1)) == []
    assert len(script.accounts) == 1
    assert len(script.calls) == 3


# ------------------------------------------------------------------ stale and duplicate tokens


def test_wrong_token_is_skipped_without_calling_the_adapter(
    engine: Engine, script: Script, db: Database, leased_job: tuple[str, str]
) -> None:
    job_id, token = leased_job
    before = snapshot(db, job_id)

    assert engine.advance(job_id, "0" * 32) == "skipped"
    assert engine.advance("luid_nosuchjob", token) == "skipped"

    assert script.calls == []
    assert script.accounts == []
    assert snapshot(db, job_id) == before


def test_the_same_claim_advanced_twice_runs_once(
    engine: Engine, script: Script, db: Database, leased_job: tuple[str, str]
) -> None:
    job_id, token = leased_job

    assert engine.advance(job_id, token) == "running"
    after_first = snapshot(db, job_id)
    assert engine.advance(job_id, token) == "skipped"

    assert len(script.submits) == 1
    assert script.polls == []
    assert snapshot(db, job_id) == after_first


def test_the_same_claim_from_eight_threads_submits_once(
    engine: Engine, script: Script, db: Database, leased_job: tuple[str, str]
) -> None:
    job_id, token = leased_job
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait(timeout=10)
        outcome = engine.advance(job_id, token)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["running"] + ["skipped"] * 7
    assert len(script.submits) == 1
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-1"
    assert job.submit_attempts == 1


# ------------------------------------------------------------------ late and out-of-order events


def test_a_claim_for_a_job_that_ended_before_advance_is_skipped(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    token = claim(engine, job_id, now=row(db, job_id).next_action_at)
    set_row(db, job_id, status=JobStatus.CANCELLED, finished_at=utcnow())
    ended = snapshot(db, job_id)

    assert engine.advance(job_id, token) == "skipped"

    assert script.polls == []
    assert snapshot(db, job_id) == ended


# ------------------------------------------------------------------ deadlines


def test_expire_overdue_fails_only_active_jobs_past_their_deadline(
    engine: Engine, db: Database, settings: Settings
) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    queued_late = new_job(db, settings, deadline_at=past)
    running_late = new_job(
        db,
        settings,
        deadline_at=past,
        status=JobStatus.RUNNING,
        generation_id="gen-x",
        lease_token="held",
        lease_until=utcnow() + dt.timedelta(minutes=1),
    )
    queued_in_time = new_job(db, settings)
    succeeded_late = new_job(db, settings, deadline_at=past, status=JobStatus.SUCCEEDED)
    cancelled_late = new_job(db, settings, deadline_at=past, status=JobStatus.CANCELLED)
    untouched = {j: snapshot(db, j) for j in (queued_in_time, succeeded_late, cancelled_late)}

    now = utcnow()
    assert engine.expire_overdue(now=now) == 2

    for job_id in (queued_late, running_late):
        job = row(db, job_id)
        assert_failed(job, "deadline_exceeded")
        assert job.finished_at == now
    for job_id, before in untouched.items():
        assert snapshot(db, job_id) == before
    assert engine.expire_overdue(now=now) == 0


def test_expire_overdue_uses_the_given_now(
    engine: Engine, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    deadline = row(db, job_id).deadline_at

    assert engine.expire_overdue() == 0
    assert engine.expire_overdue(now=deadline) == 0  # strictly past the deadline
    assert engine.expire_overdue(now=deadline + MS) == 1
    assert_failed(row(db, job_id), "deadline_exceeded")


def test_a_claim_on_an_expired_job_is_skipped(
    engine: Engine, script: Script, db: Database, leased_job: tuple[str, str]
) -> None:
    job_id, token = leased_job
    assert engine.expire_overdue(now=row(db, job_id).deadline_at + MS) == 1

    assert engine.advance(job_id, token) == "skipped"
    assert script.calls == []
    assert_failed(row(db, job_id), "deadline_exceeded")


# ------------------------------------------------------------------ advance_many


def test_advance_many_runs_claims_concurrently_one_outcome_each(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    assert settings.io_threads >= 4
    jobs = [new_job(db, settings) for _ in range(4)]
    claims = {c.job_id: c.token for c in engine.claim_due(lookahead=0, limit=100)}
    assert set(claims) == set(jobs)
    # All four submits must be in flight at once to pass this barrier; run one after another
    # they would break it, and the engine would report "error".
    together = threading.Barrier(4)

    def meet(_request: Any) -> Submission:
        together.wait(timeout=10)
        return Submission(f"gen-{threading.get_ident()}-{id(_request)}")

    script.on_submit(*[meet] * 4)
    batch = [(j, claims[j]) for j in jobs] + [(jobs[0], "stale-token")]
    outcomes = engine.advance_many(batch)

    assert outcomes == ["running"] * 4 + ["skipped"]
    assert len(script.submits) == 4
    rows = [row(db, j) for j in jobs]
    assert all(r.status == JobStatus.RUNNING for r in rows)
    assert len({r.generation_id for r in rows}) == 4
    assert all(r.lease_token is None for r in rows)


def test_advance_many_with_one_claim(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    assert engine.advance_many([(job_id, claim(engine, job_id))]) == ["running"]
    assert len(script.submits) == 1


def test_advance_many_with_no_claims(engine: Engine) -> None:
    assert engine.advance_many([]) == []


# ------------------------------------------------------------------ unexpected faults


def test_an_unexpected_poll_fault_releases_and_reschedules(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(RuntimeError("adapter bug"), SUCCESS)

    before = utcnow()
    assert step(engine, db, job_id) == "error"
    after = utcnow()

    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.poll_count == 0
    assert_released(job)
    assert job.next_action_at is not None
    assert before + dt.timedelta(seconds=5) <= job.next_action_at
    assert job.next_action_at <= after + dt.timedelta(seconds=5)
    # Not stranded: when due it is polled again and finishes.
    assert step(engine, db, job_id) == "succeeded"
    assert len(script.polls) == 2


def test_an_unexpected_submit_fault_releases_and_never_resubmits(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(RuntimeError("adapter bug"))

    before = utcnow()
    assert step(engine, db, job_id) == "error"
    after = utcnow()

    job = row(db, job_id)
    assert job.status == JobStatus.QUEUED
    assert_released(job)
    assert job.next_action_at is not None
    assert before + dt.timedelta(seconds=5) <= job.next_action_at
    assert job.next_action_at <= after + dt.timedelta(seconds=5)
    # The fault came from inside the submit call, so the upstream may have the job: the next
    # step fails it rather than risk a second (billed) song.
    assert job.submitting_since is not None
    assert step(engine, db, job_id) == "failed"
    assert_failed(row(db, job_id), "upstream_unknown")
    assert len(script.submits) == 1

"""Ending a job with its audio (app.jobs.results): the audio stored, then SUCCEEDED, once; a
late or losing writer leaves the winner's row and audio alone, and batches are written together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from app.providers.base import PollResult, PollState
from config import Settings
from tests.unit.jobs.support import (
    SUCCESS,
    WAV,
    assert_failed,
    cancel_with_follow_up,
    claim,
    due_claims,
    ledger_kinds,
    row,
    running_job,
    set_row,
    snapshot,
    step,
    stored_files,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ audio that is not audio


def test_success_without_real_audio_fails_and_stores_nothing(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(PollResult(PollState.SUCCEEDED, audio_bytes=b"<html>not audio</html>" * 10))

    assert step(engine, db, job_id) == "failed"

    job = row(db, job_id)
    assert_failed(job, "upstream_invalid_result")
    assert job.audio_key is None
    assert stored_files(settings) == []


# ------------------------------------------------------------------ late and out-of-order events


@pytest.mark.parametrize("status", [JobStatus.CANCELLED, JobStatus.FAILED])
def test_late_success_for_a_job_ended_meanwhile_changes_nothing(
    engine: Engine, script: Script, db: Database, settings: Settings, status: JobStatus
) -> None:
    job_id = running_job(engine, db, settings)
    ended: dict[str, Any] = {}

    def end_meanwhile(_generation_id: str) -> PollResult:
        set_row(db, job_id, status=status, finished_at=utcnow(), error_code="ended_meanwhile")
        ended.update(snapshot(db, job_id))
        return SUCCESS

    script.on_poll(end_meanwhile)
    assert step(engine, db, job_id) == "lost"

    assert snapshot(db, job_id) == ended
    job = row(db, job_id)
    assert job.status == status
    assert job.audio_key is None
    # The audio it downloaded is referenced by nothing, so it is gone.
    assert stored_files(settings) == []


def test_late_success_for_a_job_already_succeeded_is_a_no_op(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    done: dict[str, Any] = {}

    def finished_elsewhere(_generation_id: str) -> PollResult:
        key, info = engine.storage.store_bytes(WAV, "elsewhere", max_bytes=10**6)
        set_row(
            db,
            job_id,
            status=JobStatus.SUCCEEDED,
            audio_key=key,
            audio_format=info.format,
            audio_size=info.size,
            finished_at=utcnow(),
            next_action_at=None,
            poll_count=7,
        )
        done.update(snapshot(db, job_id))
        return SUCCESS

    script.on_poll(finished_elsewhere)
    assert step(engine, db, job_id) == "lost"

    assert snapshot(db, job_id) == done
    assert stored_files(settings) == ["elsewhere.wav"]
    # And a message arriving after that for the finished job does nothing at all.
    calls = len(script.calls)
    token = row(db, job_id).lease_token
    assert token is not None  # the direct update above left the worker's lease in place
    assert engine.advance(job_id, token) == "skipped"
    assert len(script.calls) == calls
    assert snapshot(db, job_id) == done


# ------------------------------------------------------------------ deadlines


def test_a_workers_answer_after_the_deadline_changes_nothing(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    expired: dict[str, Any] = {}

    def deadline_passes_meanwhile(_generation_id: str) -> PollResult:
        later = row(db, job_id).deadline_at + dt.timedelta(seconds=1)
        assert engine.expire_overdue(now=later) == 1
        expired.update(snapshot(db, job_id))
        return SUCCESS

    script.on_poll(deadline_passes_meanwhile)
    assert step(engine, db, job_id) == "lost"

    assert snapshot(db, job_id) == expired
    assert_failed(row(db, job_id), "deadline_exceeded")
    assert row(db, job_id).audio_key is None
    assert stored_files(settings) == []


# ------------------------------------------------------------------ found bugs, now fixed


def test_a_late_loser_does_not_delete_the_winners_audio(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    outcomes: list[str] = []

    def slow_download(_generation_id: str) -> PollResult:
        # This worker is slow (a long audio download, say): its lease runs out, the sweeper
        # hands the job to another worker, which polls, succeeds and stores the audio.
        later = utcnow() + engine.lease + dt.timedelta(seconds=1)
        outcomes.append(engine.advance(job_id, claim(engine, job_id, now=later)))
        return SUCCESS

    script.on_poll(slow_download, SUCCESS)
    outcomes.append(step(engine, db, job_id))

    assert outcomes == ["succeeded", "lost"]
    job = row(db, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.audio_key is not None
    assert (settings.storage_dir / job.audio_key).is_file()


# ------------------------------------------------------------------ batches written together


def test_finished_jobs_of_a_batch_are_written_together_each_guarded(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    """One UPDATE ends the batch's finished jobs; a job cancelled while its audio downloaded
    keeps its cancel (money released once, follow-up ended) and our copy of the audio goes."""
    jobs = [running_job(engine, db, settings) for _ in range(3)]
    claims = due_claims(engine, db, jobs)
    cancelled = jobs[0]
    cancelled_generation = row(db, cancelled).generation_id

    def cancel_meanwhile(generation_id: str) -> PollResult:
        if generation_id == cancelled_generation:
            cancel_with_follow_up(db, cancelled)
        return SUCCESS

    script.together = True
    script.on_poll(*[cancel_meanwhile] * 3)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert outcomes == ["lost", "succeeded", "succeeded"]
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE JOBS")]
    # The take, one write for the finished jobs, the cancel, and the cancelled job's hand-over.
    assert len(updates) == 4, updates
    for job_id in jobs[1:]:
        assert row(db, job_id).status == JobStatus.SUCCEEDED
    kept = row(db, cancelled)
    assert kept.status == JobStatus.CANCELLED and kept.audio_key is None
    assert kept.upstream_followup is None and kept.lease_token is None
    assert sorted(stored_files(settings)) == sorted(row(db, j).audio_key or "" for j in jobs[1:])


def test_finished_jobs_are_written_one_by_one_when_the_batch_write_fails(
    engine: Engine,
    script: Script,
    db: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy import text

    from app.jobs import transitions

    monkeypatch.setattr(transitions, "SUCCEED_MANY", text("SELECT no_such_column FROM jobs"))
    jobs = [running_job(engine, db, settings) for _ in range(2)]
    claims = due_claims(engine, db, jobs)
    script.together = True
    script.on_poll(SUCCESS, SUCCESS)
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert outcomes == ["succeeded", "succeeded"]
    for job_id in jobs:
        job = row(db, job_id)
        assert job.status == JobStatus.SUCCEEDED and job.audio_key in stored_files(settings)
        assert ledger_kinds(db, job_id) == ["capture", "hold"]
    assert len(stored_files(settings)) == 2

"""Polling upstream (app.jobs.poll): errors and invalid answers, late answers for a cancelled
job, and a batch of jobs polled together with each answer applied to its own job.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.errors import MESSAGES
from app.jobs.status import JobStatus
from app.providers.base import PollResult, PollState, ProviderError
from config import Settings
from tests.unit.jobs.support import (
    PENDING,
    SUCCESS,
    WAV,
    answer_by_generation,
    assert_failed,
    assert_released,
    cancel_with_follow_up,
    due_claims,
    invalid,
    ledger_kinds,
    row,
    running_job,
    set_row,
    snapshot,
    step,
    stored_files,
    unavailable,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ poll errors


def test_retryable_poll_error_keeps_the_job_running(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(unavailable(), unavailable(retry_after=15.0), SUCCESS)

    before = utcnow()
    assert step(engine, db, job_id) == "retry"
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.poll_count == 1
    assert job.invalid_responses == 0
    assert job.next_action_at is not None and job.next_action_at > before
    assert_released(job)

    before = utcnow()
    assert step(engine, db, job_id) == "retry"
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.poll_count == 2
    assert job.next_action_at is not None
    assert job.next_action_at >= before + dt.timedelta(seconds=15)

    assert step(engine, db, job_id) == "succeeded"
    assert [c.arg for c in script.polls] == ["gen-1"] * 3
    assert len(script.submits) == 1


@pytest.mark.env(INVALID_RESPONSE_LIMIT="3")
def test_repeated_invalid_responses_fail_the_job(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(invalid(), invalid(), invalid())

    assert step(engine, db, job_id) == "retry"
    assert step(engine, db, job_id) == "retry"
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.invalid_responses == 2
    assert job.poll_count == 2

    assert step(engine, db, job_id) == "failed"
    job = row(db, job_id)
    assert_failed(job, "upstream_invalid_response")
    assert job.error_message == MESSAGES["upstream_invalid_response"]
    assert len(script.polls) == 3


@pytest.mark.env(INVALID_RESPONSE_LIMIT="3")
def test_a_pending_answer_resets_the_invalid_response_count(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(invalid(), invalid(), PENDING, invalid(), invalid(), invalid())

    outcomes = [step(engine, db, job_id) for _ in range(5)]
    assert outcomes == ["retry", "retry", "pending", "retry", "retry"]
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.invalid_responses == 2
    assert job.poll_count == 5

    assert step(engine, db, job_id) == "failed"
    assert_failed(row(db, job_id), "upstream_invalid_response")


def test_non_retryable_poll_error_fails_the_job(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = running_job(engine, db, settings)
    script.on_poll(
        ProviderError("invalid_request", "HTTP 404: no such generation", retryable=False)
    )

    assert step(engine, db, job_id) == "failed"

    job = row(db, job_id)
    assert_failed(job, "invalid_request")
    assert job.error_message == MESSAGES["invalid_request"]
    assert len(script.polls) == 1


def test_upstream_reported_failure_fails_the_job(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    first = running_job(engine, db, settings)
    second = running_job(engine, db, settings)
    script.on_poll(
        PollResult(PollState.FAILED, error_code="upstream_rejected", error_message="content"),
        PollResult(PollState.FAILED),
    )

    assert step(engine, db, first) == "failed"
    assert step(engine, db, second) == "failed"

    job = row(db, first)
    assert_failed(job, "upstream_rejected")
    assert job.error_message == "content"
    assert job.poll_count == 1
    assert_failed(row(db, second), "upstream_failed")


# ------------------------------------------------------------------ late and out-of-order events


@pytest.mark.parametrize(
    "answer",
    [PENDING, PollResult(PollState.FAILED, error_code="late_failure"), unavailable(), invalid()],
    ids=["pending", "failed", "retryable", "invalid"],
)
def test_late_poll_answer_for_a_cancelled_job_changes_nothing(
    engine: Engine, script: Script, db: Database, settings: Settings, answer: Any
) -> None:
    job_id = running_job(engine, db, settings)
    ended: dict[str, Any] = {}

    def cancel_meanwhile(_generation_id: str) -> PollResult:
        set_row(db, job_id, status=JobStatus.CANCELLED, finished_at=utcnow(), next_action_at=None)
        ended.update(snapshot(db, job_id))
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, PollResult)
        return answer

    script.on_poll(cancel_meanwhile)
    step(engine, db, job_id)

    assert snapshot(db, job_id) == ended
    assert row(db, job_id).status == JobStatus.CANCELLED


# ------------------------------------------------------------------ found bugs, now fixed


def test_advance_many_writes_a_batch_of_pending_polls_at_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    """Pending answers for a batch are written together, each guarded like a single write:
    a job cancelled while its poll was in flight is handed to the follow-up, not rescheduled."""
    jobs = [running_job(engine, db, settings) for _ in range(4)]
    claims = due_claims(engine, db, jobs)
    cancelled = jobs[0]

    def cancel_meanwhile(_generation_id: str) -> PollResult:
        cancel_with_follow_up(db, cancelled)
        return PollResult(PollState.PENDING)

    script.on_poll(cancel_meanwhile, *[PollResult(PollState.PENDING)] * 3)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert outcomes == ["lost", "pending", "pending", "pending"]
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE JOBS")]
    # One take and one pending write for the whole batch, the cancel, and its hand-over.
    assert len(updates) == 4, updates
    for job_id in jobs[1:]:
        job = row(db, job_id)
        assert job.status == JobStatus.RUNNING
        assert job.poll_count == 1 and job.lease_token is None and job.lease_until is None
        assert job.next_action_at is not None and job.next_action_at > utcnow()
    handed = row(db, cancelled)
    assert handed.status == JobStatus.CANCELLED and handed.lease_token is None
    assert handed.poll_count == 0


# ------------------------------------------------------------------ batches polled together


def test_a_batch_polled_together_asks_once_and_applies_each_answer(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    jobs = [running_job(engine, db, settings) for _ in range(5)]
    generation = {j: row(db, j).generation_id or "" for j in jobs}
    claims = due_claims(engine, db, jobs)
    failed = PollResult(PollState.FAILED, error_code="upstream_failed", error_message="boom")
    answers: dict[str, PollResult | BaseException] = {
        generation[jobs[0]]: PENDING,
        generation[jobs[1]]: SUCCESS,
        generation[jobs[2]]: failed,
        generation[jobs[3]]: unavailable(),
        generation[jobs[4]]: SUCCESS,
    }
    script.together = True
    script.on_poll(*[answer_by_generation(answers)] * 5)
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert outcomes == ["pending", "succeeded", "failed", "retry", "succeeded"]
    assert [sorted(batch) for batch in script.batches] == [sorted(generation.values())]
    assert len(script.polls) == 5  # each generation asked once
    pending, done, broken, retried, also_done = (row(db, j) for j in jobs)
    assert pending.status == JobStatus.RUNNING and pending.poll_count == 1
    assert pending.next_action_at is not None and pending.next_action_at > utcnow()
    for job in (done, also_done):
        assert job.status == JobStatus.SUCCEEDED and job.poll_count == 1
        assert job.finished_at is not None and job.next_action_at is None
        assert job.audio_key in stored_files(settings)
        assert job.audio_size == len(WAV) and job.audio_format == "wav"
        assert ledger_kinds(db, job.id) == ["capture", "hold"]
        assert_released(job)
    assert_failed(broken, "upstream_failed")
    assert ledger_kinds(db, broken.id) == ["hold", "release"]
    assert retried.status == JobStatus.RUNNING and retried.poll_count == 1
    for job in (pending, broken, retried):
        assert_released(job)


def test_a_batch_message_delivered_twice_polls_each_job_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    jobs = [running_job(engine, db, settings) for _ in range(3)]
    claims = due_claims(engine, db, jobs)
    script.together = True
    script.on_poll(PENDING, SUCCESS, PENDING)
    batch = [(j, claims[j]) for j in jobs]
    first = engine.advance_many(batch)
    again = engine.advance_many(batch)

    assert sorted(first) == ["pending", "pending", "succeeded"]
    assert again == ["skipped"] * 3
    assert len(script.polls) == 3 and len(script.batches) == 1
    assert sorted(row(db, j).poll_count for j in jobs) == [1, 1, 1]


def test_jobs_whose_adapter_polls_one_at_a_time_keep_their_threads(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    jobs = [running_job(engine, db, settings) for _ in range(3)]
    claims = due_claims(engine, db, jobs)
    script.on_poll(PENDING, PENDING, SUCCESS)
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert sorted(outcomes) == ["pending", "pending", "succeeded"]
    assert script.batches == [] and len(script.polls) == 3

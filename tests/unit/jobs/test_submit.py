"""Sending a job upstream (app.jobs.submit): the answers and errors of a submit, retries and
their back-off, and a submit that may have reached the upstream never sent again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.errors import MESSAGES
from app.jobs.status import JobStatus
from app.providers.base import ProviderError, Submission
from config import Settings
from tests.unit.jobs.support import (
    SUCCESS,
    assert_failed,
    assert_released,
    claimed,
    new_job,
    row,
    set_row,
    snapshot,
    step,
    unavailable,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


# ------------------------------------------------------------------ an interrupted submit


def test_a_submit_interrupted_after_sending_fails_upstream_unknown_and_is_never_resent(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    # A worker died after the request started to leave, before the answer was recorded.
    job_id = new_job(
        db,
        settings,
        submitting_since=utcnow() - dt.timedelta(minutes=1),
        submit_sent_at=utcnow() - dt.timedelta(minutes=1),
        submit_attempts=1,
    )

    assert step(engine, db, job_id) == "failed"

    assert script.calls == []
    assert script.accounts == []
    job = row(db, job_id)
    assert_failed(job, "upstream_unknown")
    assert job.submit_attempts == 1
    assert job.generation_id is None
    assert job.submit_sent_at is None
    # The upstream may have made (and billed) the song: the job says so.
    assert job.upstream_attempts == 1


def test_a_submit_interrupted_before_sending_is_simply_submitted(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    # A worker died after taking the account's slot, before anything left for the upstream.
    job_id = new_job(
        db, settings, submitting_since=utcnow() - dt.timedelta(minutes=1), submit_attempts=1
    )

    assert step(engine, db, job_id) == "running"

    assert len(script.submits) == 1
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-1"
    assert (job.submitting_since, job.submit_sent_at) == (None, None)
    assert job.submit_attempts == 2
    assert job.upstream_attempts == 1


# ------------------------------------------------------------------ submit errors


def test_retryable_submit_error_keeps_the_job_queued_and_backs_off(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(unavailable())

    before = utcnow()
    assert step(engine, db, job_id) == "retry"
    after = utcnow()

    job = row(db, job_id)
    assert job.status == JobStatus.QUEUED
    assert job.submitting_since is None
    assert job.submit_attempts == 1
    assert job.error_code == "upstream_unavailable"
    assert job.generation_id is None
    assert_released(job)
    # First backoff: full jitter in [0, 2 s], never below 1 s.
    assert job.next_action_at is not None
    assert before + dt.timedelta(seconds=1) <= job.next_action_at
    assert job.next_action_at <= after + dt.timedelta(seconds=2)
    assert not claimed(engine, job_id, now=before)

    # When due it is submitted again and goes through.
    assert step(engine, db, job_id) == "running"
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-2"
    assert job.submit_attempts == 2
    assert len(script.submits) == 2


def test_retryable_submit_error_honours_retry_after(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(
        ProviderError("upstream_rate_limited", "slow down", retryable=True, retry_after=20.0)
    )

    before = utcnow()
    assert step(engine, db, job_id) == "retry"

    job = row(db, job_id)
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "upstream_rate_limited"
    assert job.next_action_at is not None
    assert job.next_action_at >= before + dt.timedelta(seconds=20)
    assert not claimed(engine, job_id, now=before + dt.timedelta(seconds=19))


@pytest.mark.env(SUBMIT_MAX_ATTEMPTS="3")
def test_submit_gives_up_after_submit_max_attempts(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    assert settings.submit_max_attempts == 3
    job_id = new_job(db, settings)
    script.on_submit(unavailable(), unavailable(), unavailable(), Submission("never"))

    outcomes = [step(engine, db, job_id) for _ in range(3)]

    assert outcomes == ["retry", "retry", "failed"]
    assert len(script.submits) == 3
    job = row(db, job_id)
    assert_failed(job, "upstream_unavailable")
    assert job.submit_attempts == 3
    assert not claimed(engine, job_id, now=utcnow() + dt.timedelta(days=1))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(
            ProviderError(
                "upstream_timeout", "no answer within 30s", retryable=True, maybe_created=True
            ),
            "upstream_unknown",
            id="may-have-created-the-job",
        ),
        pytest.param(
            ProviderError("upstream_auth_failed", "bad key", retryable=False, status_code=401),
            "upstream_auth_failed",
            id="not-retryable",
        ),
    ],
)
def test_a_submit_error_that_retrying_cannot_help_fails_at_once(
    engine: Engine,
    script: Script,
    db: Database,
    settings: Settings,
    error: ProviderError,
    code: str,
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(error)

    assert step(engine, db, job_id) == "failed"

    assert len(script.submits) == 1
    job = row(db, job_id)
    assert_failed(job, code)
    # The tenant gets the code's sentence; the detail went to the log.
    assert job.error_message == MESSAGES[code]
    assert job.submit_attempts == 1
    assert not claimed(engine, job_id, now=utcnow() + dt.timedelta(days=1))


# ------------------------------------------------------------------ late and out-of-order events


def test_late_submit_answer_for_a_cancelled_job_changes_nothing(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    ended: dict[str, Any] = {}

    def cancel_meanwhile(_request: Any) -> Submission:
        set_row(db, job_id, status=JobStatus.CANCELLED, finished_at=utcnow(), next_action_at=None)
        ended.update(snapshot(db, job_id))
        return Submission("gen-late")

    script.on_submit(cancel_meanwhile)
    assert step(engine, db, job_id) == "lost"

    assert snapshot(db, job_id) == ended
    job = row(db, job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.generation_id is None
    assert job.started_at is None


# ------------------------------------------------------------------ found bugs, now fixed


def test_sync_submission_with_its_result_succeeds(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(Submission("sync-1", result=SUCCESS))

    assert step(engine, db, job_id) == "succeeded"

    job = row(db, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.audio_key is not None
    assert (settings.storage_dir / job.audio_key).is_file()
    assert_released(job)


# ------------------------------------------------------------------ what an upstream may have billed


def test_a_retry_after_an_answer_that_may_have_been_billed_is_counted_in_the_job(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    # A MiniMax 1000 after a held call: retryable, and the work may have been charged.
    script.on_submit(
        ProviderError(
            "upstream_unavailable", "MiniMax base_resp 1000", retryable=True, maybe_billed=True
        ),
        unavailable(),  # a refusal that cost nothing
        Submission("gen-3"),
    )

    assert [step(engine, db, job_id) for _ in range(3)] == ["retry", "retry", "running"]

    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert len(script.submits) == 3
    # Two of the three submits may have been paid for: the 1000 and the one that took it.
    assert job.upstream_attempts == 2


def test_a_final_answer_that_may_have_been_billed_is_counted_in_the_job(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(
        ProviderError("content_moderated", "base_resp 1027", retryable=False, maybe_billed=True)
    )

    assert step(engine, db, job_id) == "failed"

    job = row(db, job_id)
    assert_failed(job, "content_moderated")
    assert job.upstream_attempts == 1


# ------------------------------------------------------------------ recording what the upstream took


def test_a_lease_that_lapsed_during_the_call_is_taken_back_to_record_the_answer(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)

    def claimed_again_meanwhile(_request: Any) -> Submission:
        # The database was away for longer than the lease; the scheduler leased it again,
        # and nobody acted on it yet.
        set_row(db, job_id, lease_token="the-scheduler's", lease_until=utcnow())
        return Submission("gen-kept")

    script.on_submit(claimed_again_meanwhile)

    assert step(engine, db, job_id) == "running"

    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-kept"
    assert job.upstream_attempts == 1
    assert_released(job)


def test_a_submit_found_interrupted_meanwhile_is_not_overwritten(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    ended: dict[str, Any] = {}

    def failed_meanwhile(_request: Any) -> Submission:
        # Another worker, leasing the job again, found it interrupted and failed it.
        set_row(
            db,
            job_id,
            status=JobStatus.FAILED,
            error_code="upstream_unknown",
            lease_token=None,
            finished_at=utcnow(),
            next_action_at=None,
        )
        ended.update(snapshot(db, job_id))
        return Submission("gen-late")

    script.on_submit(failed_meanwhile)

    assert step(engine, db, job_id) == "lost"
    assert snapshot(db, job_id) == ended

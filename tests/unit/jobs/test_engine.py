"""The job engine against a real Postgres and a scripted upstream (no HTTP, no Celery).

Time is moved with ``now=`` (``claim_due``, ``expire_overdue``) and direct column updates;
nothing sleeps. The fake adapter (``tests.unit.providers.fake_adapter``) records every call, so each
test can say exactly what reached the upstream.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import threading
import wave
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy import inspect as sa_inspect

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.errors import MESSAGES
from app.jobs.models import FOLLOWUP_CANCEL, Job
from app.jobs.service import create_job
from app.jobs.status import JobStatus
from app.providers.base import PollResult, PollState, ProviderError, Submission
from app.tenancy.models import ApiKey
from config import Settings
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog", "api_key")

BODY = {
    "model": "music-2.6",
    "catelogid": "music_gen",
    "prompt": "Pop music, happy, suitable for a sunny day",
    "lyrics": "[Verse]\nWalking down the street\n[Chorus]\nDancing in the sun",
}
MS = dt.timedelta(milliseconds=1)


def make_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x01" * round(seconds * rate))
    return buffer.getvalue()


WAV = make_wav()
SUCCESS = PollResult(PollState.SUCCEEDED, raw_status="completed", audio_bytes=WAV)
PENDING = PollResult(PollState.PENDING, raw_status="generating")


def unavailable(**kwargs: Any) -> ProviderError:
    return ProviderError("upstream_unavailable", "HTTP 503: busy", retryable=True, **kwargs)


def invalid() -> ProviderError:
    return ProviderError("upstream_invalid_response", "not JSON: <html>", retryable=True)


# ------------------------------------------------------------------ fixtures and helpers


def new_job(db: Database, settings: Settings, **values: Any) -> str:
    """A job accepted the way the API accepts one, then adjusted by direct column updates."""
    with db.transaction() as session:
        key = session.scalars(select(ApiKey)).one()
        job = create_job(session, key, dict(BODY), deadline_seconds=settings.job_deadline_seconds)
        session.flush()
        job_id = job.id
    if values:
        set_row(db, job_id, **values)
    return job_id


def set_row(db: Database, job_id: str, **values: Any) -> None:
    with db.transaction() as session:
        result = session.execute(update(Job).where(Job.id == job_id).values(**values))
        assert result.rowcount == 1  # type: ignore[attr-defined]


def cancel_with_follow_up(db: Database, job_id: str) -> None:
    """What a client's cancel of a RUNNING job writes (the upstream is still to be told)."""
    set_row(
        db,
        job_id,
        status=JobStatus.CANCELLED,
        upstream_followup=FOLLOWUP_CANCEL,
        finished_at=utcnow(),
    )


def row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def snapshot(db: Database, job_id: str) -> dict[str, Any]:
    job = row(db, job_id)
    return {attr.key: getattr(job, attr.key) for attr in sa_inspect(Job).column_attrs}


def claim(engine: Engine, job_id: str, now: dt.datetime | None = None) -> str:
    """Sweep at ``now`` and return the token the sweep gave ``job_id`` (it must get one)."""
    tokens = [
        c.token for c in engine.claim_due(lookahead=0.0, limit=100, now=now) if c.job_id == job_id
    ]
    assert len(tokens) == 1, f"job {job_id} was not claimed"
    return tokens[0]


def claimed(engine: Engine, job_id: str, now: dt.datetime | None = None) -> bool:
    return any(c.job_id == job_id for c in engine.claim_due(lookahead=0.0, limit=100, now=now))


def step(engine: Engine, db: Database, job_id: str) -> str:
    """Sweep at the moment the job is due (no waiting) and advance it once."""
    due = row(db, job_id).next_action_at
    assert due is not None
    return engine.advance(job_id, claim(engine, job_id, now=max(due, utcnow())))


def running_job(engine: Engine, db: Database, settings: Settings) -> str:
    job_id = new_job(db, settings)
    assert step(engine, db, job_id) == "running"
    return job_id


def stored_files(settings: Settings) -> list[str]:
    root = settings.storage_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def assert_released(job: Job) -> None:
    assert job.lease_token is None
    assert job.lease_until is None


def assert_failed(job: Job, code: str) -> None:
    assert job.status == JobStatus.FAILED
    assert job.error_code == code
    assert job.error_message
    assert job.finished_at is not None
    assert job.next_action_at is None
    assert job.submitting_since is None
    assert_released(job)


# ------------------------------------------------------------------ 1. the happy path


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


# ------------------------------------------------------------------ 2. stale and duplicate tokens


def test_wrong_token_is_skipped_without_calling_the_adapter(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    token = claim(engine, job_id)
    before = snapshot(db, job_id)

    assert engine.advance(job_id, "0" * 32) == "skipped"
    assert engine.advance("luid_nosuchjob", token) == "skipped"

    assert script.calls == []
    assert script.accounts == []
    assert snapshot(db, job_id) == before


def test_the_same_claim_advanced_twice_runs_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    token = claim(engine, job_id)

    assert engine.advance(job_id, token) == "running"
    after_first = snapshot(db, job_id)
    assert engine.advance(job_id, token) == "skipped"

    assert len(script.submits) == 1
    assert script.polls == []
    assert snapshot(db, job_id) == after_first


def test_the_same_claim_from_eight_threads_submits_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    token = claim(engine, job_id)
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


# ------------------------------------------------------------------ 3. leases


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
        # Sweeps while the worker waits on the upstream, up to just before the lease ends.
        seen.append(claimed(engine, job_id))
        soon = utcnow() + engine.lease - dt.timedelta(seconds=1)
        seen.append(claimed(engine, job_id, now=soon))
        return Submission("gen-slow")

    script.on_submit(sweep_meanwhile)
    assert step(engine, db, job_id) == "running"
    assert seen == [False, False]
    assert row(db, job_id).generation_id == "gen-slow"
    assert len(script.submits) == 1


# ------------------------------------------------------------------ 4. an interrupted submit


def test_an_interrupted_submit_fails_upstream_unknown_and_is_never_resent(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    # A worker died between sending the job upstream and recording the answer.
    job_id = new_job(
        db, settings, submitting_since=utcnow() - dt.timedelta(minutes=1), submit_attempts=1
    )

    assert step(engine, db, job_id) == "failed"

    assert script.calls == []
    assert script.accounts == []
    job = row(db, job_id)
    assert_failed(job, "upstream_unknown")
    assert job.submit_attempts == 1
    assert job.generation_id is None


# ------------------------------------------------------------------ 5. submit errors


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


def test_submit_that_may_have_created_the_job_fails_at_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(
        ProviderError(
            "upstream_timeout", "no answer within 30s", retryable=True, maybe_created=True
        )
    )

    assert step(engine, db, job_id) == "failed"

    assert len(script.submits) == 1
    job = row(db, job_id)
    assert_failed(job, "upstream_unknown")
    # The tenant gets the code's sentence; the detail went to the log.
    assert job.error_message == MESSAGES["upstream_unknown"]
    assert job.submit_attempts == 1
    assert not claimed(engine, job_id, now=utcnow() + dt.timedelta(days=1))


def test_non_retryable_submit_error_fails_at_once(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    script.on_submit(
        ProviderError("upstream_auth_failed", "bad key", retryable=False, status_code=401)
    )

    assert step(engine, db, job_id) == "failed"

    assert len(script.submits) == 1
    job = row(db, job_id)
    assert_failed(job, "upstream_auth_failed")
    assert job.error_message == MESSAGES["upstream_auth_failed"]


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


# ------------------------------------------------------------------ 6. poll errors


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


# ------------------------------------------------------------------ 7. late and out-of-order events


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


# ------------------------------------------------------------------ 8. deadlines


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


def test_a_claim_on_an_expired_job_is_skipped(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    job_id = new_job(db, settings)
    token = claim(engine, job_id)
    assert engine.expire_overdue(now=row(db, job_id).deadline_at + MS) == 1

    assert engine.advance(job_id, token) == "skipped"
    assert script.calls == []
    assert_failed(row(db, job_id), "deadline_exceeded")


# ------------------------------------------------------------------ 9. advance_many


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


# ------------------------------------------------------------------ 10. unexpected faults


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


@pytest.mark.parametrize(
    "timing",
    [
        pytest.param("test-env", id="lease-8s-calls-5s"),
        pytest.param(
            "defaults",
            id="lease-30s-calls-35s",
            marks=[
                pytest.mark.env(
                    LEASE_SECONDS="30", UPSTREAM_CONNECT_TIMEOUT="5", UPSTREAM_READ_TIMEOUT="30"
                ),
            ],
        ),
    ],
)
def test_a_submit_within_its_timeouts_keeps_its_job(
    engine: Engine, script: Script, db: Database, settings: Settings, timing: str
) -> None:
    job_id = new_job(db, settings)
    budget = settings.upstream_connect_timeout + settings.upstream_read_timeout
    outcomes: list[str] = []

    def answer_just_within_timeouts(_request: Any) -> Submission:
        # The sweeper runs a second before this call would have timed out.
        later = utcnow() + dt.timedelta(seconds=budget - 1)
        for c in engine.claim_due(lookahead=0, limit=100, now=later):
            outcomes.append(engine.advance(c.job_id, c.token))
        return Submission("gen-accepted")

    script.on_submit(answer_just_within_timeouts)
    outcomes.append(step(engine, db, job_id))

    assert outcomes == ["running"]
    job = row(db, job_id)
    assert job.status == JobStatus.RUNNING
    assert job.generation_id == "gen-accepted"
    assert len(script.submits) == 1


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


# ------------------------------------------------------------------ 11. batches polled together


def due_claims(engine: Engine, db: Database, jobs: list[str]) -> dict[str, str]:
    for job_id in jobs:
        set_row(db, job_id, next_action_at=utcnow())
    claims = {c.job_id: c.token for c in engine.claim_due(lookahead=0, limit=100)}
    assert set(claims) == set(jobs)
    return claims


def answer_by_generation(answers: dict[str, PollResult | BaseException]) -> Any:
    """A poll step that answers by generation id, whatever order the batch asks in."""

    def play(generation_id: str) -> PollResult:
        answer = answers[generation_id]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return play


def ledger_kinds(db: Database, job_id: str) -> list[str]:
    from app.money.models import LedgerEntry

    with db.session() as session:
        return sorted(session.scalars(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)))


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


def test_jobs_whose_adapter_polls_one_at_a_time_keep_their_threads(
    engine: Engine, script: Script, db: Database, settings: Settings
) -> None:
    jobs = [running_job(engine, db, settings) for _ in range(3)]
    claims = due_claims(engine, db, jobs)
    script.on_poll(PENDING, PENDING, SUCCESS)
    outcomes = engine.advance_many([(j, claims[j]) for j in jobs])

    assert sorted(outcomes) == ["pending", "pending", "succeeded"]
    assert script.batches == [] and len(script.polls) == 3


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

"""Shared set-up for the engine's tests (``tests/unit/jobs/test_{engine,leasing,submit,...}``).

Jobs are made the way the API accepts them and then moved by direct column updates; time is
moved with ``now=`` (``claim_due``, ``expire_overdue``), so nothing sleeps. The upstream is the
scripted fake of ``tests.unit.providers.fake_adapter`` (the ``script`` and ``engine`` fixtures of
``tests/conftest.py``), which records every call.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy import inspect as sa_inspect

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.intake import create_job
from app.jobs.models import FOLLOWUP_CANCEL, Job
from app.jobs.previews import AudioPreview
from app.jobs.status import JobStatus
from app.providers.base import PollResult, PollState, ProviderError
from app.sim.audio import wav_bytes
from app.tenancy.models import ApiKey
from config import Settings

BODY = {
    "model": "music-2.6",
    "catelogid": "music_gen",
    "prompt": "Pop music, happy, suitable for a sunny day",
    "lyrics": "[Verse]\nWalking down the street\n[Chorus]\nDancing in the sun",
}
MS = dt.timedelta(milliseconds=1)
WAV = wav_bytes(4000, 8000)  # half a second, mono, 8 kHz
SUCCESS = PollResult(PollState.SUCCEEDED, raw_status="completed", audio_bytes=WAV)
PENDING = PollResult(PollState.PENDING, raw_status="generating")


def unavailable(**kwargs: Any) -> ProviderError:
    return ProviderError("upstream_unavailable", "HTTP 503: busy", retryable=True, **kwargs)


def invalid() -> ProviderError:
    return ProviderError("upstream_invalid_response", "not JSON: <html>", retryable=True)


# ------------------------------------------------------------------ jobs and claims


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


def streaming_job(db: Database, settings: Settings) -> str:
    """A job making its song as a streamed one does (its early audio in ``audio_previews``)."""
    return new_job(
        db, settings, status=JobStatus.RUNNING, started_at=utcnow(), preview_format="wav"
    )


def store_pieces(db: Database, job_id: str, pieces: list[bytes], first: int = 0) -> None:
    """Early audio as the worker stores it (``PreviewWriter``), from sequence number ``first``."""
    rows = [
        {"job_id": job_id, "seq": first + i, "bytes": data, "created_at": utcnow()}
        for i, data in enumerate(pieces)
    ]
    with db.transaction() as session:
        session.execute(insert(AudioPreview), rows)


def end_streaming_job(db: Database, job_id: str, status: str, audio_key: str | None = None) -> None:
    """A streamed job's end as the status writer commits it: its pieces go in the same
    transaction (``drop_previews``)."""
    with db.transaction() as session:
        session.execute(delete(AudioPreview).where(AudioPreview.job_id == job_id))
        session.execute(
            update(Job).where(Job.id == job_id).values(status=status, audio_key=audio_key)
        )


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


# ------------------------------------------------------------------ what a test checks


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


# ------------------------------------------------------------------ batches polled together


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

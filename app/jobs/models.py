"""The job row: the single source of truth for a generation."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeAlias

from sqlalchemy import BigInteger, ForeignKey, Index, Row, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from ulid import ULID

from app.db import Base, utcnow
from app.jobs.status import JobStatus

JOB_ID_PREFIX = "luid_"

# ``Job.upstream_followup``: what is left to do upstream after a cancel.
FOLLOWUP_CANCEL = "cancel"  # tell the upstream (where its protocol can be told), then watch
FOLLOWUP_WATCH = "watch"  # wait until the upstream's generation ends


# The predicate of the partial indexes on QUEUED rows; a query they serve must say as much.
QUEUED_SQL = "status = 'QUEUED'"


def new_job_id() -> str:
    # ULIDs sort by creation time, so ids double as a stable, newest-last cursor.
    return JOB_ID_PREFIX + str(ULID()).lower()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The scheduler's hot path: due, unleased, active jobs.
        Index("ix_jobs_due", "status", "next_action_at"),
        Index("ix_jobs_org_created", "org_id", "id"),
        Index("ix_jobs_deadline", "status", "deadline_at"),
        # Slots: jobs in flight on an account.
        Index("ix_jobs_account_status", "account_id", "status"),
        # The job list filtered by status, newest first; and (its prefix) the per-org cap on
        # active jobs and usage reports.
        Index("ix_jobs_org_status_id", "org_id", "status", "id"),
        # Retention: the oldest jobs not yet purged.
        Index("ix_jobs_purge", "purged_at", "created_at"),
        # The sweep of client deadlines: only the rows that have one.
        Index(
            "ix_jobs_cancel_after",
            "status",
            "cancel_after_at",
            postgresql_where=text("cancel_after_at IS NOT NULL"),
        ),
        # Queue positions (``app.jobs.progress.queue_position``), read on every GET of a
        # queued job: only QUEUED rows, so each stays the size of the queue.
        Index("ix_jobs_queued_model", "model_id", "id", postgresql_where=text(QUEUED_SQL)),
        Index("ix_jobs_queued_account", "account_id", "id", postgresql_where=text(QUEUED_SQL)),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_job_id)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    category_id: Mapped[str] = mapped_column(String(64))
    catelogid: Mapped[str] = mapped_column(String(200))
    surface: Mapped[str] = mapped_column(String(8), default="v1")

    # What the client asked for: prompt, lyrics, output_format, audio_setting, reference audio.
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The price held for this job at submit (0 for a free one), captured or released at the end.
    price: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str | None] = mapped_column(String(3))
    callback_url: Mapped[str | None] = mapped_column(Text)
    client_metadata: Mapped[dict[str, Any] | None]

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)

    # Upstream: which account took it and under what id.
    provider: Mapped[str | None] = mapped_column(String(32))
    account_id: Mapped[str | None] = mapped_column(String(64))
    generation_id: Mapped[str | None] = mapped_column(String(300))
    # Set while a submit call is in flight: a crash leaves it set, telling the next claimer
    # that the upstream may already have the job (never submit twice).
    submitting_since: Mapped[dt.datetime | None]
    # Set just before the submit's first byte goes out (the connection is open by then). A
    # crash leaving ``submitting_since`` without it never reached the upstream: safe to resend.
    submit_sent_at: Mapped[dt.datetime | None]
    submit_attempts: Mapped[int] = mapped_column(default=0)
    # Submits an upstream may have made (and billed) a song for: 1 once it took the job; more
    # only when Chorus sent the job again after an answer that may have been billed.
    upstream_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # Set while the job waits QUEUED for a free slot on any of its accounts.
    waiting_since: Mapped[dt.datetime | None]
    poll_count: Mapped[int] = mapped_column(default=0)
    # After a cancel, while the upstream may still be making the song: "cancel" (tell the
    # upstream, then watch it) or "watch" (wait for it to end). The job keeps its account
    # slot meanwhile, so a one-song-at-a-time account is not handed a second song.
    upstream_followup: Mapped[str | None] = mapped_column(String(16))
    invalid_responses: Mapped[int] = mapped_column(default=0)

    # Audio, once SUCCEEDED: Chorus's own copy.
    audio_key: Mapped[str | None] = mapped_column(String(300))
    audio_format: Mapped[str | None] = mapped_column(String(16))
    audio_sample_rate: Mapped[int | None]
    audio_bitrate: Mapped[int | None]
    audio_channels: Mapped[int | None]
    audio_duration_ms: Mapped[int | None]
    audio_size: Mapped[int | None]
    # Set when a streamed song's first piece arrived (its format): the job has an early
    # preview of its audio (``app.jobs.previews``) while it runs.
    preview_format: Mapped[str | None] = mapped_column(String(16))

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deadline_at: Mapped[dt.datetime]
    # The client's own deadline (``Cancel-After``), never past ``deadline_at``: a job still
    # active then ends FAILED ``cancel_after_elapsed`` and is cancelled upstream.
    cancel_after_at: Mapped[dt.datetime | None]

    # Scheduling: when the engine should next look at this job, and who holds it now.
    next_action_at: Mapped[dt.datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_until: Mapped[dt.datetime | None]

    # Retention: when the job's audio and request content were removed. The row stays as a
    # tombstone (status, model, price, timings, audio facts) for usage and money history.
    purged_at: Mapped[dt.datetime | None]

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


# A job as the API reads it: the ORM object, or a plain row of the jobs table's columns (the
# hot read path fetches those with the caller's key, see app/api/auth.py).
JobRecord: TypeAlias = Job | Row[Any]


LYRICS_ID_PREFIX = "lyr_"
# ``LyricsGeneration.status``: the call is under way, or it ended one way or the other.
LYRICS_PENDING, LYRICS_SUCCEEDED, LYRICS_FAILED = "pending", "succeeded", "failed"


def new_lyrics_id() -> str:
    return LYRICS_ID_PREFIX + str(ULID()).lower()


class LyricsGeneration(Base):
    """One ``POST /v1/lyrics/generations``: written, with its hold, before the upstream call,
    and settled after it. A row left ``pending`` (its process died mid-call) is released by
    ``app.jobs.lyrics.release_abandoned``. Its id names its money in the ledger."""

    __tablename__ = "lyrics_generations"
    __table_args__ = (Index("ix_lyrics_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    price: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=LYRICS_PENDING)
    account_id: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    # What the upstream wrote: title, style_tags and lyrics.
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class JobEvent(Base):
    """One stored event of a job: its creation (QUEUED) or a change of its status, written in
    the transaction that made it (``app.jobs.journal``). Its id orders a job's and an org's
    events, and is the position a live stream resumes from (``Last-Event-ID``). The job's
    object is not kept: a stream sends the job as it is when the event goes out."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job", "job_id", "id"),
        Index("ix_job_events_org", "org_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # No foreign key: the event is written in the statement that inserts its job, and a
    # check per event would cost the submit's hot path a lookup for nothing.
    job_id: Mapped[str] = mapped_column(String(40))
    org_id: Mapped[int]
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]

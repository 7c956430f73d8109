"""The one writer of a job's status, and the side effects every change carries.

Every change of ``jobs.status`` is one guarded UPDATE made here, for one job or a whole
batch. It names its rows (a job, a batch, every job past its deadline), the lease its writer
holds where a worker writes, and the states the lifecycle (``app.jobs.status.TRANSITIONS``)
allows the target to be entered from. A late, duplicated or out-of-order writer therefore
matches no row, and each change happens at most once.

What must go with a change registers as a hook: ``on_change`` hooks run in the transaction of
the UPDATE with the rows it changed, so what they write (money, the webhook outbox) commits or
rolls back with the status; ``after_commit`` hooks run once it committed (a woken waiter must
read the new row). ``app.wiring`` registers Chorus's; a new side effect is one more hook.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    String,
    Table,
    Update,
    bindparam,
    case,
    column,
    or_,
    update,
)
from sqlalchemy.orm import Session

from app.db import Database, UTCDateTime, unnest, utcnow
from app.jobs.errors import CANCEL_AFTER_ELAPSED, MESSAGES
from app.jobs.models import FOLLOWUP_CANCEL, Job
from app.jobs.status import JobStatus, sources
from app.storage import AudioInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One job that entered ``status`` at ``at``; ``job`` is the row as its writer knew it,
    ``error_code`` the one written with a failure."""

    job: Job
    status: JobStatus
    at: dt.datetime
    # The error a FAILED change wrote (``job`` is the row as it was before, for ``move``).
    error_code: str | None = None


OnChange = Callable[[Session, Sequence[Change]], None]
AfterCommit = Callable[[Sequence[Change]], None]


# The columns a success writes the stored audio's facts to, in the order of ``Finished.audio``.
AUDIO = (
    "audio_key",
    "audio_format",
    "audio_sample_rate",
    "audio_bitrate",
    "audio_channels",
    "audio_duration_ms",
    "audio_size",
)


@dataclass(frozen=True)
class Finished:
    """A polled job whose audio is stored, waiting for its SUCCEEDED write."""

    job: Job
    key: str
    info: AudioInfo

    @property
    def audio(self) -> tuple[Any, ...]:
        info = self.info
        return (
            self.key,
            info.format,
            info.sample_rate,
            info.bitrate,
            info.channels,
            info.duration_ms,
            info.size,
        )


def guarded(target: JobStatus) -> Update:
    """An UPDATE to ``target`` of rows in a state the lifecycle allows it to be entered from."""
    return (
        update(Job)
        .where(Job.status.in_(sorted(sources(target))))
        .values(status=target)
        .execution_options(synchronize_session=False)
    )


def _ended(now: Any) -> dict[str, Any]:
    """What every terminal write of a worker clears: nothing is due, and the lease is free."""
    return {"finished_at": now, "next_action_at": None, "lease_token": None, "lease_until": None}


def _succeeded(audio: dict[str, Any], now: Any) -> dict[str, Any]:
    """What a success writes besides its status, for one job or (as columns) a batch."""
    return {
        **audio,
        "error_code": None,
        "error_message": None,
        "poll_count": Job.poll_count + 1,
        **_ended(now),
    }


def _upstream_has_it() -> Any:
    """The rows whose upstream may have the job: RUNNING, or a submit under way."""
    return or_(Job.status == JobStatus.RUNNING, Job.submitting_since.is_not(None))


def _followed(upstream_has_it: Any, now: dt.datetime) -> dict[str, Any]:
    """What ending a job at the client's word writes: where ``upstream_has_it``, a follow-up
    due now (``app.jobs.followup``) and the lease left to its holder, whose later writes are
    then refused and who hands the job on when it notices; elsewhere nothing left to do."""
    return {
        "upstream_followup": case((upstream_has_it, FOLLOWUP_CANCEL), else_=None),
        "next_action_at": case((upstream_has_it, now), else_=None),
        "lease_token": case((upstream_has_it, Job.lease_token), else_=None),
        "lease_until": case((upstream_has_it, Job.lease_until), else_=None),
    }


_JOBS = cast(Table, Job.__table__)
_FINISHED = unnest(
    "finished",
    column("id", String),
    column("token", String),
    *(column(name, _JOBS.c[name].type) for name in AUDIO),
)
_NOW = bindparam("now", type_=UTCDateTime())
# SUCCEEDED with the stored audio's facts, for a batch: each row guarded as ``move`` guards one.
SUCCEED_MANY = (
    guarded(JobStatus.SUCCEEDED)
    .where(Job.id == _FINISHED.c.id, Job.lease_token == _FINISHED.c.token)
    .values(updated_at=_NOW, **_succeeded({name: _FINISHED.c[name] for name in AUDIO}, _NOW))
    .returning(Job.id)
)


class Transitions:
    """Moves jobs between states; the only code that does."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._on_change: list[OnChange] = []
        self._after_commit: list[AfterCommit] = []

    def on_change(self, hook: OnChange) -> OnChange:
        """Run ``hook`` in the transaction of every change, with the changed rows."""
        self._on_change.append(hook)
        return hook

    def after_commit(self, hook: AfterCommit) -> AfterCommit:
        """Run ``hook`` after the commit of every change, with the changed rows."""
        self._after_commit.append(hook)
        return hook

    # ------------------------------------------------------------------ one leased job

    def move(self, job: Job, target: JobStatus, *, release: bool = False, **values: Any) -> bool:
        """Move ``job`` to ``target`` while its lease is ours (``job.lease_token``) and its
        state allows; False, with nothing written, otherwise. ``release`` frees the lease."""
        now = utcnow()
        if release:
            values.update(lease_token=None, lease_until=None)
        statement = (
            guarded(target)
            .where(Job.id == job.id, Job.lease_token == job.lease_token)
            .values(updated_at=now, **values)
        )

        def write(session: Session) -> list[Change]:
            changed = session.execute(statement).rowcount == 1  # type: ignore[attr-defined]
            return [Change(job, target, now, values.get("error_code"))] if changed else []

        return bool(self._commit(write))

    def fail(self, job: Job, code: str, message: str, **values: Any) -> bool:
        """FAIL a leased job with the error the client will read."""
        return self.move(
            job,
            JobStatus.FAILED,
            error_code=code,
            error_message=message[:2000],
            submitting_since=None,
            submit_sent_at=None,
            **{**_ended(utcnow()), **values},
        )

    def succeed(self, done: Finished) -> bool:
        """SUCCEED a leased job with its stored audio."""
        audio = dict(zip(AUDIO, done.audio, strict=True))
        return self.move(done.job, JobStatus.SUCCEEDED, **_succeeded(audio, utcnow()))

    # ------------------------------------------------------------------ batches

    def succeed_many(self, finished: Sequence[Finished]) -> set[str]:
        """``succeed`` for a batch, in one statement; the ids it changed."""
        if not finished:
            return set()
        now = utcnow()
        columns = zip(*(done.audio for done in finished), strict=True)
        params = {
            "ids": [done.job.id for done in finished],
            "tokens": [done.job.lease_token for done in finished],
            **{f"{name}s": list(values) for name, values in zip(AUDIO, columns, strict=True)},
            "now": now,
        }

        def write(session: Session) -> list[Change]:
            written = set(session.scalars(SUCCEED_MANY, params))
            return [
                Change(d.job, JobStatus.SUCCEEDED, now) for d in finished if d.job.id in written
            ]

        return {change.job.id for change in self._commit(write)}

    def expire(self, now: dt.datetime) -> list[Job]:
        """FAIL every active job past its deadline, whoever holds its lease: the client's own
        (``cancel_after_elapsed``) first, then the system's (``deadline_exceeded``)."""
        return self.expire_client_deadlines(now) + self._expire_own(now)

    def expire_client_deadlines(self, now: dt.datetime) -> list[Job]:
        """FAIL every active job past the deadline its client set (``Cancel-After``).

        As a client's cancel does (``cancel``), a job the upstream may already have keeps its
        lease and gets a follow-up that tells the upstream to stop, where its protocol can,
        and keeps the account's slot until the generation ends; its hold is released like
        any failure's. A job whose success committed first is not touched: it is charged.
        """
        upstream_has_it = _upstream_has_it()
        statement = (
            guarded(JobStatus.FAILED)
            .where(Job.cancel_after_at.is_not(None), Job.cancel_after_at < now)
            .values(
                error_code=CANCEL_AFTER_ELAPSED,
                error_message=MESSAGES[CANCEL_AFTER_ELAPSED],
                finished_at=now,
                updated_at=now,
                waiting_since=None,
                **_followed(upstream_has_it, now),
            )
            .returning(Job)
        )

        def write(session: Session) -> list[Change]:
            expired = session.scalars(statement).all()
            return [Change(job, JobStatus.FAILED, now, job.error_code) for job in expired]

        return [change.job for change in self._commit(write)]

    def _expire_own(self, now: dt.datetime) -> list[Job]:
        statement = (
            guarded(JobStatus.FAILED)
            .where(Job.deadline_at < now)
            .values(
                error_code="deadline_exceeded",
                error_message="the job did not finish before its deadline",
                updated_at=now,
                **_ended(now),
            )
            .returning(Job)
        )

        def write(session: Session) -> list[Change]:
            expired = session.scalars(statement).all()
            return [Change(job, JobStatus.FAILED, now, job.error_code) for job in expired]

        return [change.job for change in self._commit(write)]

    # ------------------------------------------------------------------ the client

    def cancel(self, org_id: int, job_id: str) -> Job | None:
        """CANCEL the org's job if it is still active; None if it is not (or not the org's).

        The client's cancel outranks any lease: a worker still holding one finds its later
        writes refused, and hands the job to the follow-up when it notices. A job the upstream
        may already have (RUNNING, or a submit under way) keeps that follow-up and its lease;
        one nobody sent anywhere has nothing left to do.
        """
        now = utcnow()
        statement = (
            guarded(JobStatus.CANCELLED)
            .where(Job.id == job_id, Job.org_id == org_id)
            .values(
                finished_at=now,
                updated_at=now,
                waiting_since=None,
                **_followed(_upstream_has_it(), now),
            )
            .returning(Job)
        )

        def write(session: Session) -> list[Change]:
            job = session.scalars(statement).one_or_none()
            return [] if job is None else [Change(job, JobStatus.CANCELLED, now)]

        changes = self._commit(write)
        return changes[0].job if changes else None

    # ------------------------------------------------------------------ hooks

    def _commit(self, write: Callable[[Session], list[Change]]) -> list[Change]:
        with self.db.transaction() as session:
            changes = write(session)
            if changes:
                for hook in self._on_change:
                    hook(session, changes)
        if changes:
            for after in self._after_commit:
                try:
                    after(changes)
                except Exception:
                    # The change is committed; what follows it cannot undo it.
                    log.exception("a hook after %d job change(s) failed", len(changes))
        return changes

"""Leases on job rows, and the writes a lease holder makes besides a change of status.

Every job row carries ``next_action_at`` (when to look at it next) and a lease
(``lease_token`` + ``lease_until``). The scheduler (``claim_due``) leases due jobs in one short
transaction and hands their ids and tokens to workers; a worker first swaps the token for a
fresh one with a compare-and-set (``take``), so of two copies of one message only one
proceeds, and a message whose lease was taken over by a later claim does nothing. Every
write here is a conditional UPDATE guarded by the token and by the job's state, so a late or
duplicated writer changes nothing.

A worker's lease is short (``LEASE_SECONDS``) and it keeps renewing the leases of the steps
it is running (``Renewals``), however long their upstream calls take. A worker killed mid-job
stops renewing, so its leases lapse within one lease's length and the scheduler picks its
jobs up again. A claim not yet taken (its message queued, or held by a worker until its ETA)
has a longer lease, which nothing renews (``CLAIM_LEASES``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    DateTime,
    String,
    and_,
    bindparam,
    case,
    column,
    func,
    or_,
    select,
    tuple_,
    update,
)

from app.db import Database, UTCDateTime, unnest, utcnow
from app.jobs.models import Job
from app.jobs.outcome import Outcome
from app.jobs.status import ACTIVE, FOLLOWED, JobStatus

log = logging.getLogger(__name__)

Claim = tuple[str, str]  # (job id, lease token)

# The rows the scheduler may lease: active jobs, and ended ones whose upstream is still
# followed (``FOLLOWED``). An ended row is due only while it has a follow-up: its
# next_action_at is NULL otherwise.
SWEPT = [JobStatus.QUEUED, JobStatus.RUNNING, *sorted(FOLLOWED)]

_PENDING = unnest(
    "pending",
    column("id", String),
    column("token", String),
    column("due", DateTime(timezone=True)),
)
# "Still pending, next look at t" for a batch, each row guarded as ``write`` guards one.
RESCHEDULE_MANY = (
    update(Job)
    .where(
        Job.id == _PENDING.c.id,
        Job.lease_token == _PENDING.c.token,
        Job.status.in_(list(ACTIVE)),
    )
    .values(
        next_action_at=_PENDING.c.due,
        poll_count=Job.poll_count + 1,
        invalid_responses=0,
        lease_token=None,
        lease_until=None,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(Job.id)
    .execution_options(synchronize_session=False)
)


# Renewals per lease: a holder whose renewals are this many times late in a row loses it.
RENEWALS_PER_LEASE = 4
# Seconds between two renewal passes of one process, however often it is woken.
MIN_RENEWAL_GAP = 0.2
# A claim's lease, in leases: a claim's message may wait in the broker's queue behind a
# backlog, where nothing renews it, and a claim that lapsed there is sent again while the
# first message, when its turn comes, finds the token changed and does nothing. A backlog
# longer than this sends every due job twice per claim lease; shorter claims would also let
# it grow into one where most messages arrive stale.
CLAIM_LEASES = 3


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class DueClaim:
    job_id: str
    token: str
    due_at: dt.datetime
    status: str  # QUEUED jobs go to the submit task, RUNNING ones to the poll task


def _takeable() -> Any:
    """The rows a step may take: active jobs, and ended ones still followed upstream."""
    return or_(
        Job.status.in_(list(ACTIVE)),
        and_(Job.status.in_(sorted(FOLLOWED)), Job.upstream_followup.is_not(None)),
    )


class Leases:
    def __init__(self, db: Database, lease: dt.timedelta) -> None:
        self.db = db
        self.lease = lease
        self.claim_lease = CLAIM_LEASES * lease
        self.renewals = Renewals(db, lease)

    # ------------------------------------------------------------------ the scheduler

    def claim_due(
        self, lookahead: float, limit: int, now: dt.datetime | None = None
    ) -> list[DueClaim]:
        """Lease active jobs due within ``lookahead`` seconds whose lease is free or expired."""
        now = now or utcnow()
        horizon = now + dt.timedelta(seconds=lookahead)
        with self.db.transaction() as session:
            rows = session.execute(
                select(Job.id, Job.next_action_at, Job.status)
                .where(
                    Job.status.in_(SWEPT),
                    Job.next_action_at <= horizon,
                    or_(Job.lease_until.is_(None), Job.lease_until < now),
                )
                .order_by(Job.next_action_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            # One statement leases the whole round under one token (an UPDATE per row cost
            # more than the rest of the round). A token only has to differ from the one any
            # other holder of the same job has; each claim still names its job.
            token = new_token()
            session.execute(
                update(Job)
                .where(Job.id.in_([job_id for job_id, _, _ in rows]))
                .values(lease_token=token, lease_until=horizon + self.claim_lease)
                .execution_options(synchronize_session=False)
            )
        return [
            DueClaim(job_id, token, max(due_at or now, now), status)
            for job_id, due_at, status in rows
        ]

    def retake_sent(self, job: Job) -> bool:
        """Lease ``job`` again if it is still this very submit, sent and unanswered: nobody
        acted on it since (a cancel, or a claimer finding it interrupted, would have changed it)."""
        token = new_token()
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.status == JobStatus.QUEUED,
                    Job.submit_attempts == job.submit_attempts,
                    Job.submitting_since.is_not(None),
                    Job.submit_sent_at.is_not(None),
                )
                .values(lease_token=token, lease_until=utcnow() + self.lease)
                .execution_options(synchronize_session=False)
            )
            taken = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if taken:
            log.warning("job %s: its lease lapsed while recording the submit; taken back", job.id)
            job.lease_token = token
        return taken

    def forgive_outage(self, since: dt.datetime, now: dt.datetime | None = None) -> int:
        """Give the leases that lapsed while the database was unreachable one lease more.

        No holder can renew a lease while the database is away, so one that lapsed then says
        nothing of its holder: a worker still alive (retrying the write of what an upstream
        just accepted, say) must get the job back before anyone else takes it. A holder that
        really died loses it one lease later.
        """
        now = now or utcnow()
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.status.in_(SWEPT),
                    Job.lease_token.is_not(None),
                    Job.lease_until >= since - self.lease,
                    Job.lease_until < now + self.lease,
                )
                .values(lease_until=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def next_due(self) -> dt.datetime | None:
        """When the scheduler next has something to do for a job: the earliest next look (or,
        while a job is leased, the lease's end: its holder may have died) or deadline, its
        own or its client's. None when no job is waiting."""
        due = case(
            (Job.lease_until > Job.next_action_at, Job.lease_until), else_=Job.next_action_at
        )
        with self.db.session() as session:
            found = [
                session.scalar(
                    select(func.min(due)).where(
                        Job.status.in_(SWEPT), Job.next_action_at.is_not(None)
                    )
                ),
                session.scalar(select(func.min(Job.deadline_at)).where(Job.status.in_(ACTIVE))),
                # The clients' own deadlines (ix_jobs_cancel_after holds only rows with one).
                session.scalar(
                    select(func.min(Job.cancel_after_at)).where(
                        Job.status.in_(ACTIVE), Job.cancel_after_at.is_not(None)
                    )
                ),
            ]
        return min((when for when in found if when is not None), default=None)

    # ------------------------------------------------------------------ a worker

    def take(self, job_id: str, token: str) -> Job | None:
        """The job with a fresh lease of ours, if ``token`` still holds it; else None."""
        fresh = new_token()
        now = utcnow()
        with self.db.transaction() as session:
            # One round trip: swap the token and read the row back.
            return session.scalars(
                update(Job)
                .where(Job.id == job_id, Job.lease_token == token, _takeable())
                .values(lease_token=fresh, lease_until=now + self.lease)
                .returning(Job)
                .execution_options(synchronize_session=False)
            ).one_or_none()

    def take_many(self, claims: list[Claim]) -> dict[str, Job]:
        """``take`` for a batch of distinct jobs in one round trip. The batch shares one fresh
        token: each job's only has to differ from the one every other holder of its claim has."""
        if not claims:
            return {}
        fresh = new_token()
        now = utcnow()
        with self.db.transaction() as session:
            jobs = session.scalars(
                update(Job)
                .where(tuple_(Job.id, Job.lease_token).in_(claims), _takeable())
                .values(lease_token=fresh, lease_until=now + self.lease)
                .returning(Job)
                .execution_options(synchronize_session=False)
            ).all()
        return {job.id: job for job in jobs}

    def write(
        self, job: Job, allowed: Iterable[JobStatus], *, release: bool = False, **values: Any
    ) -> bool:
        """One conditional UPDATE of a job's other columns (its status is the transitions'):
        applies only while we hold the lease and the job is in one of the ``allowed`` states."""
        if release:
            values.update(lease_token=None, lease_until=None)
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.lease_token == job.lease_token,
                    Job.status.in_([s.value for s in allowed]),
                )
                .values(updated_at=utcnow(), **values)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def reschedule(self, job: Job, *, delay: float, **values: Any) -> bool:
        """Give an active job's lease back, to be looked at again in ``delay`` seconds."""
        return self.write(
            job,
            ACTIVE,
            release=True,
            next_action_at=utcnow() + dt.timedelta(seconds=delay),
            **values,
        )

    def reschedule_pending(self, pending: list[tuple[Job, dt.datetime]]) -> list[str]:
        """Write "still pending, next look at t" for many polled jobs, in one statement. Each
        row is guarded as ``write`` guards one (lease token, active state). Returns the ids
        whose write was refused (a cancel took them meanwhile)."""
        if not pending:
            return []
        with self.db.transaction() as session:
            written = set(
                session.scalars(
                    RESCHEDULE_MANY,
                    {
                        "ids": [job.id for job, _ in pending],
                        "tokens": [job.lease_token for job, _ in pending],
                        "dues": [due for _, due in pending],
                        "now": utcnow(),
                    },
                )
            )
        return [job.id for job, _ in pending if job.id not in written]

    def hand_back(self, job: Job, *, upstream_done: bool, **values: Any) -> Outcome:
        """Our write was refused: if a cancel (or the client's deadline) took the job, hand it
        to the follow-up at once. The step's outcome is then LOST.

        The cancel leaves the lease with the worker holding it; giving it back now (rather
        than at its expiry, minutes away for a synchronous upstream) frees the account's slot
        or starts the follow-up straight away. Matches nothing unless the job was cancelled.
        """
        if upstream_done:
            values.update(upstream_followup=None, next_action_at=None)
        else:
            values.update(next_action_at=utcnow())
        with self.db.transaction() as session:
            session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.lease_token == job.lease_token,
                    Job.status.in_(sorted(FOLLOWED)),
                    # A cancel with nothing upstream to follow already dropped the lease.
                    Job.upstream_followup.is_not(None),
                )
                .values(updated_at=utcnow(), lease_token=None, lease_until=None, **values)
                .execution_options(synchronize_session=False)
            )
        return Outcome.LOST


class _Renewer:
    """A thread of this process that renews a set of leases every quarter of a lease."""

    def __init__(self, db: Database, lease: dt.timedelta) -> None:
        self.db = db
        self.lease = lease
        self.interval = lease.total_seconds() / RENEWALS_PER_LEASE
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    def _ensure_thread(self) -> None:
        """Start the thread (called under the lock). A forked child starts its own: its
        parent's did not come with it."""
        if self._pid != os.getpid():
            threading.Thread(target=self._run, name="lease-renewals", daemon=True).start()
            self._pid = os.getpid()

    def renew(self) -> int:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the next pass tries again; never die
                log.warning("renewing leases failed (%s); retrying", type(exc).__name__)
            # Wake-ups meanwhile are answered by one pass after this pause.
            time.sleep(MIN_RENEWAL_GAP)

    def _set_lease(self, claims: list[Claim], until: Any) -> set[Claim]:
        """Set the lease's end of each of ``claims`` still held by its token to ``until``;
        returns the claims it was set for. Rows a writer has locked are skipped rather than
        waited for, so a renewal can never deadlock a step's batch write (a row it skipped is
        renewed on the next pass)."""
        held = (
            select(Job.id)
            .where(tuple_(Job.id, Job.lease_token).in_(claims))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.db.transaction() as session:
            rows = session.execute(
                update(Job)
                .where(Job.id.in_(held))
                .values(lease_until=until)
                .returning(Job.id, Job.lease_token)
                .execution_options(synchronize_session=False)
            )
            return {(job_id, token) for job_id, token in rows if token is not None}


class Renewals(_Renewer):
    """Keeps alive the leases of the steps this process is running.

    A step holds its job (``holding``) from the take to its last write; meanwhile the thread
    moves the lease's end to a lease from now. The renewal is guarded by the token like every
    other write, so a lease given back, ended or taken over is left alone, and it never
    shortens a longer lease (a submit's on an account whose calls take minutes).
    """

    def __init__(self, db: Database, lease: dt.timedelta) -> None:
        super().__init__(db, lease)
        self._held: Counter[Claim] = Counter()

    @contextmanager
    def holding(self, jobs: Iterable[Job]) -> Iterator[None]:
        claims = [(job.id, job.lease_token) for job in jobs if job.lease_token]
        with self._lock:
            self._held.update(claims)
            if claims:
                self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(claims)
                self._held = +self._held  # drops the claims no step holds any more

    def held(self) -> list[Claim]:
        with self._lock:
            return list(self._held)

    def renew(self) -> int:
        """Extend every lease held here to a lease from now; returns how many were."""
        claims = self.held()
        if not claims:
            return 0
        until = func.greatest(Job.lease_until, utcnow() + self.lease)
        return len(self._set_lease(claims, until))


class Received(_Renewer):
    """The claims whose messages a worker has received and not yet started (held for their
    ETA, or waiting for a free process), in the worker's main process.

    A claim is leased for ``CLAIM_LEASES`` leases while its message may be waiting in the
    broker. Once a living worker has the message, its claim needs only a lease, renewed: a
    worker killed with received messages (which its broker gives back only after the
    visibility timeout) leaves them to the scheduler within one lease. A claim leaves the set
    at the first pass that finds its token gone (the job taken, released or ended), or a
    claim lease after it arrived: a message whose task failed before taking its jobs must not
    keep them from the scheduler while the worker lives.
    """

    def __init__(self, db: Database, lease: dt.timedelta) -> None:
        super().__init__(db, lease)
        self._claims: dict[Claim, float] = {}  # claim -> when it arrived (monotonic)

    def add(self, claims: Iterable[Claim]) -> None:
        """Take over the claims of a message just received: their next pass comes at once,
        since a worker killed right after receiving them would otherwise leave them the
        claim lease."""
        now = time.monotonic()
        with self._lock:
            self._claims.update((claim, now) for claim in claims)
            if self._claims:
                self._ensure_thread()
        self._wake.set()

    def claims(self) -> list[Claim]:
        """The claims still renewed here (those held longer than a claim lease are let go)."""
        oldest = time.monotonic() - CLAIM_LEASES * self.lease.total_seconds()
        with self._lock:
            for claim in [c for c, at in self._claims.items() if at < oldest]:
                del self._claims[claim]
            return list(self._claims)

    def renew(self) -> int:
        """Set each received claim's lease to a lease from now; returns how many were."""
        claims = self.claims()
        if not claims:
            return 0
        kept = self._set_lease(claims, utcnow() + self.lease)
        with self._lock:
            # A claim skipped under a writer's lock is dropped too: it keeps its claim lease.
            for claim in claims:
                if claim not in kept:
                    self._claims.pop(claim, None)
        return len(kept)

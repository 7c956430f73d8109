"""Moves jobs through their lifecycle. Celery only carries "look at job X with claim T".

Every job row carries ``next_action_at`` (when to look at it next) and a lease
(``lease_token`` + ``lease_until``). The scheduler (``claim_due``) leases due jobs in one short
transaction and hands their ids and tokens to workers; ``advance`` first swaps the token for
a fresh one with a compare-and-set, so of two copies of one message only one proceeds, and a
message whose lease was taken over by a later claim does nothing. Every state change is a
conditional UPDATE guarded by the token and by the state machine's source states, so a
late or duplicated writer changes nothing. A worker killed mid-job leaves a lease that simply
expires; the scheduler picks the job up again.

No HTTP call happens inside a database transaction, and no worker sleeps while an
upstream works: between polls a job is only a row.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
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
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import ColumnClause

from app.cache import TTLCache
from app.catalog.models import Model, UpstreamAccount
from app.db import Database, UTCDateTime, database_url, utcnow
from app.doorbell import doorbell
from app.http.downloads import Downloads
from app.jobs.accounts import Accounts, NoRoute, Reserved, Wait
from app.jobs.errors import public_message
from app.jobs.models import FOLLOWUP_CANCEL, FOLLOWUP_WATCH, Job
from app.jobs.schedule import PollPolicy, backoff
from app.jobs.status import ACTIVE, JobStatus, sources
from app.jobs.waiting import TerminalNotifier
from app.money import ledger
from app.providers import get_adapter
from app.providers.base import (
    AccountConfig,
    Adapter,
    GenerationRequest,
    PollResult,
    PollState,
    ProviderError,
)
from app.storage import AudioError, AudioInfo, AudioStorage, make_storage
from app.webhooks import outbox
from config import Settings

log = logging.getLogger(__name__)

Claim = tuple[str, str]  # (job id, lease token)

# The rows the scheduler may lease: active jobs, and cancelled ones whose upstream is still followed.
# A cancelled row is due only while it has a follow-up: its next_action_at is NULL otherwise.
SWEPT = [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED]

SIM_PLACEHOLDER = "{sim_url}"
WRITE_ATTEMPTS = 4
SIM_KEY = "chorus-sim"


def _unnest(name: str, *columns: ColumnClause[Any]) -> Any:
    """Rows passed as one array per column (Postgres): the statement has one shape whatever
    the batch's size, so SQLAlchemy compiles it once, where VALUES rows compiled it anew for
    every batch."""
    arrays = [bindparam(f"{c.name}s", type_=ARRAY(c.type)) for c in columns]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)


_PENDING = _unnest(
    "pending",
    column("id", String),
    column("token", String),
    column("due", DateTime(timezone=True)),
)
# "Still pending, next look at t" for a batch, each row guarded as ``_write`` guards one.
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

_FINISHED = _unnest(
    "finished",
    column("id", String),
    column("token", String),
    column("key", String),
    column("format", String),
    column("sample_rate", Integer),
    column("bitrate", Integer),
    column("channel", Integer),
    column("duration", Integer),
    column("size", BigInteger),
)
# SUCCEEDED with the stored audio's facts, for a batch; guarded as ``_write`` guards one.
SUCCEED_MANY = (
    update(Job)
    .where(
        Job.id == _FINISHED.c.id,
        Job.lease_token == _FINISHED.c.token,
        Job.status.in_(list(sources(JobStatus.SUCCEEDED))),
    )
    .values(
        status=JobStatus.SUCCEEDED,
        finished_at=bindparam("now", type_=UTCDateTime()),
        audio_key=_FINISHED.c.key,
        audio_format=_FINISHED.c.format,
        audio_sample_rate=_FINISHED.c.sample_rate,
        audio_bitrate=_FINISHED.c.bitrate,
        audio_channels=_FINISHED.c.channel,
        audio_duration_ms=_FINISHED.c.duration,
        audio_size=_FINISHED.c.size,
        error_code=None,
        error_message=None,
        poll_count=Job.poll_count + 1,
        next_action_at=None,
        lease_token=None,
        lease_until=None,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(Job.id)
    .execution_options(synchronize_session=False)
)


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Finished:
    """A polled job whose audio is stored, waiting for its SUCCEEDED write."""

    job: Job
    key: str
    info: AudioInfo


@dataclass
class Deferred:
    """The writes a batch's steps leave for ``advance_many`` to make together (the steps run on
    threads of their own; list.append is atomic)."""

    pending: list[tuple[Job, dt.datetime]] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)


@dataclass(frozen=True)
class DueClaim:
    job_id: str
    token: str
    due_at: dt.datetime
    status: str  # QUEUED jobs go to the submit task, RUNNING ones to the poll task


class Engine:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        storage: AudioStorage | None = None,
        adapter_factory: Callable[[AccountConfig], Adapter] = get_adapter,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage or make_storage(settings)
        self.adapter_factory = adapter_factory
        self.policy = PollPolicy(
            strategy=settings.poll_strategy,
            fixed_interval=settings.poll_fixed_interval,
            min_interval=settings.poll_min_interval,
            max_interval=settings.poll_max_interval,
        )
        # A lease shorter than one upstream call would let the scheduler take an in-flight job away.
        call = settings.upstream_connect_timeout + settings.upstream_read_timeout
        self.lease = dt.timedelta(seconds=max(settings.lease_seconds, call + 15))
        self._adapters: dict[str, Adapter] = {}
        self.accounts = Accounts(db)
        # Catalog rows change rarely; every job step used to read them again.
        self._models: TTLCache[Model] = TTLCache(ttl=10.0)
        self._account_configs: TTLCache[AccountConfig | None] = TTLCache(ttl=5.0)
        self._lease_cache: TTLCache[dict[str, dt.timedelta]] = TTLCache(ttl=5.0)
        self._pool: ThreadPoolExecutor | None = None
        self._downloads: Downloads | None = None
        # Set by the Celery layer: sends a job (id, lease token) to the sync worker's queue.
        self.handoff: Callable[[str, str], None] | None = None
        # Tells web processes holding `Prefer: wait` requests that a job has ended.
        self.notifier = TerminalNotifier(settings)
        # Wakes the scheduler when this process's writes make work due.
        self.doorbell = doorbell(database_url(settings))

    # ------------------------------------------------------------------ sweeping

    def expire_overdue(self, now: dt.datetime | None = None) -> int:
        """FAIL every active job past its deadline. Returns how many."""
        now = now or utcnow()
        with self.db.transaction() as session:
            expired = session.scalars(
                update(Job)
                .where(Job.status.in_(list(ACTIVE)), Job.deadline_at < now)
                .values(
                    status=JobStatus.FAILED,
                    error_code="deadline_exceeded",
                    error_message="the job did not finish before its deadline",
                    finished_at=now,
                    next_action_at=None,
                    lease_token=None,
                    lease_until=None,
                )
                .returning(Job)
                .execution_options(synchronize_session=False)
            ).all()
            for job in expired:
                ledger.settle(session, job.id, capture=False)
                outbox.enqueue_for(session, job, JobStatus.FAILED, now)
            # Past its deadline an upstream generation is as good as dead: stop following a
            # cancelled job's, so its account slot comes back even if no follow-up ran.
            session.execute(
                update(Job)
                .where(
                    Job.status == JobStatus.CANCELLED,
                    Job.deadline_at < now,
                    Job.upstream_followup.is_not(None),
                )
                .values(upstream_followup=None, next_action_at=None)
                .execution_options(synchronize_session=False)
            )
        self.notifier.publish([job.id for job in expired])
        return len(expired)

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
                .values(lease_token=token, lease_until=horizon + self.lease)
                .execution_options(synchronize_session=False)
            )
        return [
            DueClaim(job_id, token, max(due_at or now, now), status)
            for job_id, due_at, status in rows
        ]

    def next_due(self) -> dt.datetime | None:
        """When the scheduler next has something to do for a job: the earliest next look (or,
        while a job is leased, the lease's end: its holder may have died) or deadline. None
        when no job is waiting."""
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
            ]
        return min((when for when in found if when is not None), default=None)

    # ------------------------------------------------------------------ advancing

    def advance_many(self, claims: Iterable[Claim], *, blocking: bool = False) -> list[str]:
        done = self._advance_many(list(claims), blocking=blocking)
        if any(outcome != "skipped" for outcome in done):
            # What the steps wrote (next looks, retries, ended jobs with their webhook events,
            # freed account slots) may be due before the scheduler would otherwise look.
            self.doorbell.ring()
        return done

    def _advance_many(self, claims: list[Claim], *, blocking: bool) -> list[str]:
        if not claims:
            return []
        if len(claims) == 1:
            return [self.advance(*claims[0], blocking=blocking)]
        # One statement takes the whole batch's leases; each job then steps on its own thread,
        # and the two common outcomes of a poll, "still pending, look again at t" and "done,
        # here is the audio", are written for the whole batch at the end, one transaction
        # each. A job named twice in one batch (a duplicated claim) goes the one-at-a-time
        # way, where each claim's own token decides.
        named = Counter(job_id for job_id, _ in claims)
        taken = self._take_many([c for c in claims if named[c[0]] == 1])
        batch = Deferred()
        # Status calls the upstream's adapter can make for the whole batch at once, from
        # this thread: far cheaper than one thread per call.
        polled = self._poll_together(list(taken.values()))

        def step(claim: Claim) -> str:
            if named[claim[0]] > 1:
                return self.advance(*claim, blocking=blocking)
            job = taken.get(claim[0])
            if job is None:
                return "skipped"
            return self._step(job, blocking=blocking, batch=batch, polled=polled.get(job.id))

        # A step whose answer is "still pending" only notes when to look next: it runs here.
        # The rest (submits, downloads, one-at-a-time polls) run on the I/O threads.
        outcomes: list[str | None] = [None] * len(claims)
        threaded: list[int] = []
        for index, claim in enumerate(claims):
            answer = polled.get(claim[0]) if named[claim[0]] == 1 else None
            if isinstance(answer, PollResult) and answer.state is PollState.PENDING:
                outcomes[index] = step(claim)
            else:
                threaded.append(index)
        ran = self.pool.map(step, [claims[i] for i in threaded])
        for index, outcome in zip(threaded, ran, strict=True):
            outcomes[index] = outcome
        refused = set(self._reschedule_pending(batch.pending))
        finished = self._finish_many(batch.finished)
        done: list[str] = []
        for (job_id, _), stepped in zip(claims, outcomes, strict=True):
            if named[job_id] == 1 and job_id in refused:
                stepped = self._cancelled_meanwhile(taken[job_id], upstream_done=False)
            elif named[job_id] == 1 and job_id in finished:
                stepped = finished[job_id]
            done.append(stepped or "error")
        return done

    def _poll_together(self, jobs: list[Job]) -> dict[str, PollResult | ProviderError]:
        """Poll the batch's RUNNING jobs whose adapter asks about many at once; by job id.
        Jobs left out are polled one at a time by their step."""
        by_account: dict[str, list[Job]] = {}
        for job in jobs:
            if job.status == JobStatus.RUNNING and job.generation_id and job.account_id:
                by_account.setdefault(job.account_id, []).append(job)
        answers: dict[str, PollResult | ProviderError] = {}
        width = max(1, self.settings.io_threads)
        for group in by_account.values():
            try:
                account = self._job_account(group[0])
                adapter = self._adapter(account) if account is not None else None
                if adapter is None or not adapter.polls_together:
                    continue
                # As many calls in flight at once as the process has I/O threads.
                for start in range(0, len(group), width):
                    chunk = group[start : start + width]
                    results = adapter.poll_many([job.generation_id or "" for job in chunk])
                    answers.update(zip((job.id for job in chunk), results, strict=True))
            except Exception:
                # A bug here must not stall the batch: its jobs are polled one at a time.
                log.exception("polling %d job(s) together failed", len(group))
        return answers

    @property
    def pool(self) -> ThreadPoolExecutor:
        # Created on first use, so a forked worker child builds its own.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.io_threads, thread_name_prefix="advance"
            )
        return self._pool

    def advance(self, job_id: str, token: str, *, blocking: bool = False) -> str:
        """Take one step for the job if ``token`` still holds its lease. Safe to call twice.

        ``blocking`` says this caller may hold a synchronous upstream call open for minutes
        (the sync worker). Otherwise such a submit is handed off to that worker.
        """
        job = self._take(job_id, token)
        if job is None:
            return "skipped"
        return self._step(job, blocking=blocking)

    def _step(
        self,
        job: Job,
        *,
        blocking: bool,
        batch: Deferred | None = None,
        polled: PollResult | ProviderError | None = None,
    ) -> str:
        """One step for a taken job; ``polled`` is its status answer when the batch already
        asked the upstream."""
        try:
            if job.status == JobStatus.QUEUED:
                return self._submit(job, blocking=blocking)
            if job.status == JobStatus.CANCELLED:
                return self._follow_up(job)
            return self._poll(job, batch=batch, polled=polled)
        except Exception:
            # The boundary: an unexpected fault (a bug, the database) must not strand the job.
            # Give the lease back and look again soon; the deadline bounds how long this lasts.
            log.exception("advancing job %s failed; it will be retried", job.id)
            self._reschedule(job, delay=5.0)
            return "error"

    def _takeable(self) -> Any:
        """The rows a step may take: active jobs, and cancelled ones still followed upstream."""
        return or_(
            Job.status.in_(list(ACTIVE)),
            and_(Job.status == JobStatus.CANCELLED, Job.upstream_followup.is_not(None)),
        )

    def _take_many(self, claims: list[Claim]) -> dict[str, Job]:
        """``_take`` for a batch of distinct jobs in one round trip. The batch shares one fresh
        token: each job's only has to differ from the one every other holder of its claim has."""
        if not claims:
            return {}
        fresh = new_token()
        now = utcnow()
        with self.db.transaction() as session:
            jobs = session.scalars(
                update(Job)
                .where(tuple_(Job.id, Job.lease_token).in_(claims), self._takeable())
                .values(lease_token=fresh, lease_until=now + self.lease)
                .returning(Job)
                .execution_options(synchronize_session=False)
            ).all()
        return {job.id: job for job in jobs}

    def _take(self, job_id: str, token: str) -> Job | None:
        fresh = new_token()
        now = utcnow()
        with self.db.transaction() as session:
            # One round trip: swap the token and read the row back.
            return session.scalars(
                update(Job)
                .where(Job.id == job_id, Job.lease_token == token, self._takeable())
                .values(lease_token=fresh, lease_until=now + self.lease)
                .returning(Job)
                .execution_options(synchronize_session=False)
            ).one_or_none()

    # ------------------------------------------------------------------ submit

    def _submit(self, job: Job, *, blocking: bool) -> str:
        if job.submitting_since is not None:
            # A previous attempt died between sending the job upstream and recording the
            # answer. The upstream may have it, and a second submit could make (and bill) a
            # second song.
            self._fail(
                job,
                "upstream_unknown",
                "a submit was interrupted; the upstream may or may not have the job, "
                "and it was not submitted twice",
            )
            return "failed"
        if not blocking and self.handoff is not None:
            first = self.accounts.first_route(job)
            if first is not None and self._adapter(self._config(first)).mode == "sync":
                # Holding a call open for minutes belongs to the sync worker's thread pool,
                # not to the slots that submit and poll every other job.
                # The sync worker takes a lease of its own; this one only covers the queue wait.
                if not self._write(job, {JobStatus.QUEUED}, lease_until=utcnow() + self.lease):
                    return "lost"
                self.handoff(job.id, job.lease_token or "")
                return "handoff"
        # Whatever can fail before the call happens first: a fault here must not look like
        # an interrupted submit.
        request = self._generation_request(job)
        reservation = self.accounts.reserve(job, lease_for=self._leases(), default_lease=self.lease)
        if isinstance(reservation, NoRoute):
            self._fail(job, "no_upstream", "no enabled upstream account serves this model")
            return "failed"
        if isinstance(reservation, Wait):
            # Every account is full or its breaker is open: wait QUEUED, not FAILED. The
            # scheduler wakes the job as soon as a slot frees.
            self._write(
                job,
                {JobStatus.QUEUED},
                release=True,
                waiting_since=job.waiting_since or utcnow(),
                next_action_at=reservation.until,
            )
            return "waiting"
        if not isinstance(reservation, Reserved):
            return "lost"
        job.submit_attempts += 1
        job.submitting_since = utcnow()
        try:
            # Everything between the reservation and the call: if it fails, nothing was sent,
            # and the job must not look like an interrupted submit.
            account = self._config(reservation.account)
            adapter = self._adapter(account)
            first_poll = self._poll_delay(job, 0.0)
        except Exception:
            self._write(job, {JobStatus.QUEUED}, submitting_since=None)
            raise
        job.provider, job.account_id = account.provider, account.id
        try:
            submission = adapter.submit(request)
        except ProviderError as exc:
            self._count_fault(account.id, exc)
            outcome = self._submit_failed(job, exc)
            if outcome != "retry":
                # Cancelled during the call: whatever reached the upstream is not followed.
                self._cancelled_meanwhile(job, upstream_done=True)
            return outcome
        now = utcnow()
        # The upstream has the job now: recording that must not be lost to a passing database
        # fault, or the job would look like an interrupted submit.
        if not self._write_hard(
            job,
            sources(JobStatus.RUNNING),
            status=JobStatus.RUNNING,
            generation_id=submission.generation_id,
            started_at=now,
            submitting_since=None,
            error_code=None,
            error_message=None,
            # A synchronous upstream answered with the result: keep the lease for _apply.
            release=submission.result is None,
            next_action_at=now + dt.timedelta(seconds=first_poll),
        ):
            # Cancelled during the call: the upstream has the job now, so follow it there
            # (tell it, then keep the account's slot until it ends). A synchronous answer
            # already carries the song, which nobody wants any more: it is not stored.
            return self._cancelled_meanwhile(
                job,
                upstream_done=submission.result is not None or not submission.generation_id,
                generation_id=submission.generation_id,
            )
        job.status, job.started_at = JobStatus.RUNNING, now
        try:
            self.accounts.record_success(account.id)
        except SQLAlchemyError:
            log.warning("could not record a success for account %s", account.id, exc_info=True)
        if submission.result is not None:
            return self._apply(job, submission.result)
        return "running"

    def _submit_failed(self, job: Job, exc: ProviderError) -> str:
        if exc.maybe_created:
            self._fail(
                job, "upstream_unknown", public_message(job.id, "upstream_unknown", exc.message)
            )
            return "failed"
        if exc.retryable and job.submit_attempts < self.settings.submit_max_attempts:
            delay = backoff(job.submit_attempts, retry_after=exc.retry_after)
            log.info("job %s: submit failed (%s), retrying in %.1fs", job.id, exc.code, delay)
            # Nothing reached the upstream: the next attempt may take another route.
            written = self._write(
                job,
                {JobStatus.QUEUED},
                submitting_since=None,
                error_code=exc.code,
                error_message=public_message(job.id, exc.code, exc.message),
                release=True,
                next_action_at=utcnow() + dt.timedelta(seconds=delay),
            )
            return "retry" if written else "lost"
        self._fail(job, exc.code, public_message(job.id, exc.code, exc.message))
        return "failed"

    def _count_fault(self, account_id: str, exc: ProviderError) -> None:
        # Only the upstream being broken counts: business errors and rate limits do not.
        transient = exc.retryable and exc.code != "upstream_rate_limited"
        if transient and self.accounts.record_failure(account_id):
            log.warning("circuit breaker opened for upstream account %s", account_id)

    # ------------------------------------------------------------------ poll

    def _poll(
        self,
        job: Job,
        *,
        batch: Deferred | None = None,
        polled: PollResult | ProviderError | None = None,
    ) -> str:
        account = self._job_account(job)
        if account is None or job.generation_id is None:
            self._fail(job, "upstream_unknown", "the job's upstream account is gone")
            return "failed"
        try:
            if isinstance(polled, ProviderError):
                raise polled
            result = polled or self._adapter(account).poll(job.generation_id)
        except ProviderError as exc:
            # The breaker guards new submits only: a healthy poll must not close a breaker
            # that failing submits opened, nor a flaky poll open one.
            return self._poll_failed(job, exc)
        return self._apply(job, result, batch=batch)

    def _poll_failed(self, job: Job, exc: ProviderError) -> str:
        if exc.code == "upstream_invalid_response":
            count = job.invalid_responses + 1
            if count >= self.settings.invalid_response_limit:
                detail = f"{count} unreadable answers in a row; last: {exc.message}"
                self._fail(job, exc.code, public_message(job.id, exc.code, detail))
                return "failed"
            self._reschedule(
                job,
                delay=backoff(count, base=1.0),
                invalid_responses=count,
                poll_count=Job.poll_count + 1,
            )
            return "retry"
        if not exc.retryable:
            self._fail(job, exc.code, public_message(job.id, exc.code, exc.message))
            return "failed"
        delay = backoff(job.poll_count + 1, base=1.0, cap=30.0, retry_after=exc.retry_after)
        self._reschedule(job, delay=delay, poll_count=Job.poll_count + 1)
        return "retry"

    def _apply(self, job: Job, result: PollResult, *, batch: Deferred | None = None) -> str:
        if result.state is PollState.PENDING:
            elapsed = (utcnow() - (job.started_at or job.created_at)).total_seconds()
            if batch is not None:
                # Written with the rest of the batch by advance_many (list.append is atomic).
                due = utcnow() + dt.timedelta(seconds=self._poll_delay(job, elapsed))
                batch.pending.append((job, due))
                return "pending"
            if not self._reschedule(
                job,
                delay=self._poll_delay(job, elapsed),
                poll_count=Job.poll_count + 1,
                invalid_responses=0,
            ):
                return self._cancelled_meanwhile(job, upstream_done=False)
            return "pending"
        if result.state is PollState.FAILED:
            if not self._fail(
                job,
                result.error_code or "upstream_failed",
                result.error_message or "the upstream reported a failed generation",
                poll_count=Job.poll_count + 1,
            ):
                return self._cancelled_meanwhile(job, upstream_done=True)
            return "failed"
        try:
            key, info = self._store_audio(job, result)
        except AudioError as exc:
            if exc.retryable:
                self._reschedule(
                    job, delay=backoff(job.poll_count + 1, base=1.0), poll_count=Job.poll_count + 1
                )
                return "retry"
            code = "upstream_invalid_result"
            if exc.gone:
                account = self._job_account(job)
                code = self._adapter(account).gone_audio_code if account else code
            message = public_message(job.id, code, str(exc))
            self._fail(job, code, message, poll_count=Job.poll_count + 1)
            return "failed"
        if batch is not None:
            batch.finished.append(Finished(job, key, info))
            return "succeeded"
        return self._succeed(Finished(job, key, info))

    def _succeed(self, done: Finished) -> str:
        """Record one job SUCCEEDED with its stored audio (settling its money in the same
        transaction); or, if a cancel took it meanwhile, drop our copy of the audio."""
        written = self._write(
            done.job,
            sources(JobStatus.SUCCEEDED),
            **self._success_values(done, utcnow()),
            poll_count=Job.poll_count + 1,
            release=True,
        )
        if not written:
            # Someone else finished or cancelled the job meanwhile; our copy is not referenced.
            self.storage.delete(done.key)
            return self._cancelled_meanwhile(done.job, upstream_done=True)
        return "succeeded"

    @staticmethod
    def _success_values(done: Finished, now: dt.datetime) -> dict[str, Any]:
        return {
            "status": JobStatus.SUCCEEDED,
            "finished_at": now,
            "audio_key": done.key,
            "audio_format": done.info.format,
            "audio_sample_rate": done.info.sample_rate,
            "audio_bitrate": done.info.bitrate,
            "audio_channels": done.info.channels,
            "audio_duration_ms": done.info.duration_ms,
            "audio_size": done.info.size,
            "error_code": None,
            "error_message": None,
            "next_action_at": None,
        }

    def _store_audio(self, job: Job, result: PollResult) -> tuple[str, AudioInfo]:
        # A key of its own per attempt: a slow loser cleaning up its copy can never delete
        # the file the winner's row points to.
        stem = f"{job.id}-{secrets.token_hex(4)}"
        if result.audio_bytes is not None:
            return self.storage.store_bytes(
                result.audio_bytes, stem, max_bytes=self.settings.audio_max_bytes
            )
        if not result.audio_url:
            raise AudioError("the upstream reported success without audio", retryable=False)
        account = self._job_account(job)
        return self.storage.fetch(
            result.audio_url,
            stem,
            max_bytes=self.settings.audio_max_bytes,
            timeout=(self.settings.upstream_connect_timeout, self.settings.upstream_read_timeout),
            downloads=self.downloads,
            trusted=account.base_url if account else None,
        )

    @property
    def downloads(self) -> Downloads:
        """One pooled client for audio downloads, per process: a fresh connection per finished
        job cost more than the download."""
        if self._downloads is None:
            self._downloads = Downloads(self.settings)
        return self._downloads

    # ------------------------------------------------------------------ after a cancel

    def _follow_up(self, job: Job) -> str:
        """One step for a cancelled job whose upstream may still be making its song.

        The client's view is final (CANCELLED, money released); this only tells the upstream
        where its protocol allows, and keeps the account's slot until the upstream's
        generation ends, so the account is not handed a second song while busy. Nothing here
        changes the status, moves money or stores audio.
        """
        account = self._job_account(job)
        if account is None or job.generation_id is None or job.deadline_at <= utcnow():
            # Nothing to follow: no upstream id (the submit never answered), or past the point
            # where the engine gives any generation up.
            self._end_follow_up(job)
            return "cancelled"
        adapter = self._adapter(account)
        if job.upstream_followup == FOLLOWUP_CANCEL:
            try:
                adapter.cancel(job.generation_id)
            except ProviderError as exc:
                # The cancel stands either way: the upstream just finishes a song nobody reads.
                log.warning("job %s: could not tell the upstream of the cancel: %s", job.id, exc)
        try:
            result = adapter.poll(job.generation_id)
        except ProviderError as exc:
            if not exc.retryable:
                self._end_follow_up(job)
                return "cancelled"
            delay = backoff(job.poll_count + 1, base=1.0, cap=30.0, retry_after=exc.retry_after)
            self._watch(job, delay)
            return "following"
        if result.state is PollState.PENDING:
            elapsed = (utcnow() - (job.started_at or job.created_at)).total_seconds()
            self._watch(job, self._poll_delay(job, elapsed))
            return "following"
        self._end_follow_up(job)
        return "cancelled"

    def _watch(self, job: Job, delay: float) -> bool:
        return self._write(
            job,
            {JobStatus.CANCELLED},
            release=True,
            upstream_followup=FOLLOWUP_WATCH,
            poll_count=Job.poll_count + 1,
            next_action_at=utcnow() + dt.timedelta(seconds=delay),
        )

    def _end_follow_up(self, job: Job) -> bool:
        return self._write(
            job, {JobStatus.CANCELLED}, release=True, upstream_followup=None, next_action_at=None
        )

    def _reschedule_pending(self, pending: list[tuple[Job, dt.datetime]]) -> list[str]:
        """Write "still pending, next look at t" for many polled jobs, in one statement. Each
        row is guarded as ``_write`` guards one (lease token, active state). Returns the ids
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

    def _finish_many(self, finished: list[Finished]) -> dict[str, str]:
        """Write SUCCEEDED for many jobs whose audio is stored: one UPDATE, and each
        job's money and webhook event in the same transaction, as ``_write`` does for one.
        Returns each job's outcome."""
        if not finished:
            return {}
        now = utcnow()
        params = {
            "ids": [done.job.id for done in finished],
            "tokens": [done.job.lease_token for done in finished],
            "keys": [done.key for done in finished],
            "formats": [done.info.format for done in finished],
            "sample_rates": [done.info.sample_rate for done in finished],
            "bitrates": [done.info.bitrate for done in finished],
            "channels": [done.info.channels for done in finished],
            "durations": [done.info.duration_ms for done in finished],
            "sizes": [done.info.size for done in finished],
            "now": now,
        }
        try:
            with self.db.transaction() as session:
                written = set(session.scalars(SUCCEED_MANY, params))
                for done in finished:
                    if done.job.id in written:
                        # The money moves in the transaction that ends the job, and the
                        # webhook event exists exactly when the change does.
                        ledger.settle(session, done.job.id, capture=True)
                        outbox.enqueue_for(session, done.job, JobStatus.SUCCEEDED, now)
        except Exception:
            # A deadlock with another many-row writer, say: each job on its own, then.
            log.warning("writing %d finished jobs at once failed", len(finished), exc_info=True)
            return {done.job.id: self._succeed_or_retry(done) for done in finished}
        self.notifier.publish(sorted(written))
        outcomes = {}
        for done in finished:
            if done.job.id in written:
                outcomes[done.job.id] = "succeeded"
            else:
                # Someone else finished or cancelled the job meanwhile; our copy is not
                # referenced.
                self.storage.delete(done.key)
                outcomes[done.job.id] = self._cancelled_meanwhile(done.job, upstream_done=True)
        return outcomes

    def _succeed_or_retry(self, done: Finished) -> str:
        try:
            return self._succeed(done)
        except Exception:
            # As _step's boundary: the job must not be stranded; the next poll finds it done
            # again and stores a fresh copy, so this one is dropped.
            log.exception("finishing job %s failed; it will be retried", done.job.id)
            self.storage.delete(done.key)
            self._reschedule(done.job, delay=5.0)
            return "error"

    def _cancelled_meanwhile(self, job: Job, *, upstream_done: bool, **values: Any) -> str:
        """Our write was refused: if a cancel took the job, hand it to the follow-up at once.

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
                    Job.status == JobStatus.CANCELLED,
                    # A cancel with nothing upstream to follow already dropped the lease.
                    Job.upstream_followup.is_not(None),
                )
                .values(updated_at=utcnow(), lease_token=None, lease_until=None, **values)
                .execution_options(synchronize_session=False)
            )
        return "lost"

    # ------------------------------------------------------------------ writes

    def _write(
        self, job: Job, allowed: Iterable[JobStatus], *, release: bool = False, **values: Any
    ) -> bool:
        """One conditional UPDATE: applies only while we hold the lease and the state allows it."""
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
            changed = bool(result.rowcount == 1)  # type: ignore[attr-defined]
            target = values.get("status")
            ended = changed and target is not None and JobStatus(target).terminal
            if ended:
                # The money moves in the transaction that ends the job: once, or not at all.
                ledger.settle(session, job.id, capture=target == JobStatus.SUCCEEDED)
            if changed and target is not None:
                # So does the webhook event: it exists exactly when the change does.
                outbox.enqueue_for(session, job, target)
        if ended:
            # After the commit: a woken waiter must read the terminal row, not the old one.
            self.notifier.publish([job.id])
        return changed

    def _write_hard(self, job: Job, allowed: Iterable[JobStatus], **values: Any) -> bool:
        """``_write``, retried through transient database faults (a restart, a deadlock)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._write(job, allowed, **values)
            except SQLAlchemyError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.warning("job %s: write failed, retrying", job.id, exc_info=True)
                time.sleep(0.2 * 2**attempt)
        return False

    def _reschedule(self, job: Job, *, delay: float, **values: Any) -> bool:
        return self._write(
            job,
            ACTIVE,
            release=True,
            next_action_at=utcnow() + dt.timedelta(seconds=delay),
            **values,
        )

    def _fail(self, job: Job, code: str, message: str, **values: Any) -> bool:
        return self._write(
            job,
            sources(JobStatus.FAILED),
            status=JobStatus.FAILED,
            error_code=code,
            error_message=message[:2000],
            finished_at=utcnow(),
            submitting_since=None,
            next_action_at=None,
            release=True,
            **values,
        )

    # ------------------------------------------------------------------ helpers

    def _poll_delay(self, job: Job, elapsed: float) -> float:
        model = self._model(job.model_id)
        return self.policy.next_delay(elapsed, model.expected_seconds, model.expected_spread)

    def _model(self, model_id: int) -> Model:
        def load() -> Model:
            with self.db.session() as session:
                model = session.get(Model, model_id)
            if model is None:
                raise LookupError(f"model {model_id} is gone")
            return model

        return self._models.get(model_id, load)

    def _lease_for(self, account: UpstreamAccount) -> dt.timedelta:
        """Long enough for one call on this account (MiniMax holds calls for minutes)."""
        read = account.read_timeout or self.settings.upstream_read_timeout
        call = self.settings.upstream_connect_timeout + read + 15
        return max(self.lease, dt.timedelta(seconds=call))

    def _leases(self) -> dict[str, dt.timedelta]:
        def load() -> dict[str, dt.timedelta]:
            with self.db.session() as session:
                accounts = session.scalars(
                    select(UpstreamAccount).where(UpstreamAccount.read_timeout.is_not(None))
                ).all()
            return {a.id: self._lease_for(a) for a in accounts}

        return self._lease_cache.get("leases", load)

    def _job_account(self, job: Job) -> AccountConfig | None:
        if not job.account_id:
            return None
        account_id = job.account_id

        def load() -> AccountConfig | None:
            with self.db.session() as session:
                account = session.get(UpstreamAccount, account_id)
            return self._config(account) if account else None

        return self._account_configs.get(account_id, load)

    def _config(self, account: UpstreamAccount) -> AccountConfig:
        api_key = self.settings.credential(account.credential_env)
        if api_key is None and SIM_PLACEHOLDER in account.base_url:
            api_key = SIM_KEY  # the simulator wants some bearer key, like a real upstream
        return AccountConfig(
            id=account.id,
            provider=account.provider,
            base_url=account.base_url.replace(SIM_PLACEHOLDER, self.settings.sim_url),
            api_key=api_key,
            upstream_account=account.upstream_account,
            connect_timeout=self.settings.upstream_connect_timeout,
            read_timeout=account.read_timeout or self.settings.upstream_read_timeout,
        )

    def _adapter(self, account: AccountConfig) -> Adapter:
        # One adapter (and so one pooled HTTP session) per account and process.
        adapter = self._adapters.get(account.id)
        if adapter is None or adapter.account != account:
            adapter = self._adapters[account.id] = self.adapter_factory(account)
        return adapter

    def _generation_request(self, job: Job) -> GenerationRequest:
        model = self._model(job.model_id)
        request = job.request or {}
        return GenerationRequest(
            upstream_model=model.upstream_model,
            prompt=request.get("prompt", ""),
            lyrics=request.get("lyrics"),
            output_format=request.get("output_format", "url"),
            audio_setting=request.get("audio_setting") or {},
            reference_audio_url=request.get("reference_audio_url"),
        )

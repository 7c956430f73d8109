"""Moves jobs through their lifecycle. Celery only carries "look at job X with claim T".

The scheduler leases due jobs (``claim_due``, ``app.jobs.leasing``) and hands their ids and
tokens to workers; ``advance`` takes a job's lease with a compare-and-set, so of two copies of
one message only one proceeds, then takes one step for it: a QUEUED job is submitted
(``app.jobs.submit``), a RUNNING one polled (``app.jobs.poll``, its audio stored by
``app.jobs.results``), a cancelled one whose upstream still works followed
(``app.jobs.followup``). Every write is guarded by the lease and the job's state, so a late
or duplicated writer changes nothing; a change of status, with its money, webhook event and
woken waiters, is made by ``app.jobs.transitions``.

No HTTP call happens inside a database transaction, and no worker sleeps while an
upstream works: between polls a job is only a row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from app.db import Database, database_url, utcnow
from app.doorbell import doorbell
from app.jobs.accounts import Accounts
from app.jobs.followup import FollowUp
from app.jobs.leasing import Claim, DueClaim, Leases
from app.jobs.logfields import about
from app.jobs.models import Job
from app.jobs.outcome import Outcome
from app.jobs.poll import Deferred, Poller
from app.jobs.results import Results
from app.jobs.status import FOLLOWED, JobStatus
from app.jobs.submit import Submitter
from app.jobs.transitions import Transitions
from app.jobs.upstreams import Upstreams
from app.providers import get_adapter
from app.providers.base import AccountConfig, Adapter, PollResult, PollState, ProviderError
from app.storage import AudioStorage, make_storage
from config import Settings

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        storage: AudioStorage | None = None,
        adapter_factory: Callable[[AccountConfig], Adapter] = get_adapter,
        *,
        transitions: Transitions,
        handoff: Callable[[str, str], None] | None = None,
    ) -> None:
        """``transitions`` is the status writer with its side effects (``app.wiring.writer``:
        the money, the webhook event, the woken waiters), given by whoever builds the engine.
        ``handoff`` sends a job (id, lease token) to the sync worker's queue, whose calls
        may stay open for minutes; without it every submit is made here."""
        self.settings = settings
        self.db = db
        self.storage = storage or make_storage(settings)
        # Short, so a dead worker's jobs are soon taken up again: a step in progress keeps
        # its lease by renewing it (``Renewals``), however long its upstream call takes.
        self.lease = dt.timedelta(seconds=settings.lease_seconds)
        self.accounts = Accounts(db)
        # Every change of a job's status, with its money, webhook event and woken waiters.
        self.transitions = transitions
        self.upstreams = Upstreams(settings, db, adapter_factory, self.lease)
        self.policy = self.upstreams.policy
        self.leases = Leases(db, self.lease)
        self.results = Results(
            settings, self.storage, self.transitions, self.leases, self.upstreams
        )
        self.poller = Poller(settings, self.upstreams, self.leases, self.transitions, self.results)
        self.submitter = Submitter(
            settings,
            self.accounts,
            self.upstreams,
            self.leases,
            self.transitions,
            self.poller,
            handoff,
        )
        self.follow_up = FollowUp(self.upstreams, self.leases)
        self._pool: ThreadPoolExecutor | None = None
        # Wakes the scheduler when this process's writes make work due.
        self.doorbell = doorbell(database_url(settings))

    # ------------------------------------------------------------------ the scheduler's

    def expire_overdue(self, now: dt.datetime | None = None) -> int:
        """FAIL every active job past its deadline. Returns how many."""
        now = now or utcnow()
        expired = self.transitions.expire(now)
        self.follow_up.give_up_overdue(now)
        return len(expired)

    def claim_due(
        self, lookahead: float, limit: int, now: dt.datetime | None = None
    ) -> list[DueClaim]:
        return self.leases.claim_due(lookahead, limit, now)

    def next_due(self) -> dt.datetime | None:
        return self.leases.next_due()

    def forgive_outage(self, since: dt.datetime) -> int:
        return self.leases.forgive_outage(since)

    # ------------------------------------------------------------------ the workers'

    def advance_many(self, claims: Iterable[Claim], *, blocking: bool = False) -> list[Outcome]:
        done = self._advance_many(list(claims), blocking=blocking)
        if any(outcome is not Outcome.SKIPPED for outcome in done):
            # What the steps wrote (next looks, retries, ended jobs with their webhook events,
            # freed account slots) may be due before the scheduler would otherwise look. One
            # ring for the batch: the engine's writer does not ring per change.
            self.doorbell.ring()
        return done

    def _advance_many(self, claims: list[Claim], *, blocking: bool) -> list[Outcome]:
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
        taken = self.leases.take_many([c for c in claims if named[c[0]] == 1])
        with self.leases.renewals.holding(taken.values()):
            return self._step_many(claims, named, taken, blocking=blocking)

    def _step_many(
        self, claims: list[Claim], named: Counter[str], taken: dict[str, Job], *, blocking: bool
    ) -> list[Outcome]:
        batch = Deferred()
        # Status calls the upstream's adapter can make for the whole batch at once, from
        # this thread: far cheaper than one thread per call.
        polled = self.poller.poll_together(list(taken.values()))

        def step(claim: Claim) -> Outcome:
            if named[claim[0]] > 1:
                return self.advance(*claim, blocking=blocking)
            job = taken.get(claim[0])
            if job is None:
                return Outcome.SKIPPED
            return self._step(job, blocking=blocking, batch=batch, polled=polled.get(job.id))

        # A step whose answer is "still pending" only notes when to look next: it runs here.
        # The rest (submits, downloads, one-at-a-time polls) run on the I/O threads.
        outcomes: list[Outcome | None] = [None] * len(claims)
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
        refused = set(self.leases.reschedule_pending(batch.pending))
        finished = self.results.succeed_many(batch.finished)
        done: list[Outcome] = []
        for (job_id, _), stepped in zip(claims, outcomes, strict=True):
            if named[job_id] == 1 and job_id in refused:
                stepped = self.leases.hand_back(taken[job_id], upstream_done=False)
            elif named[job_id] == 1 and job_id in finished:
                stepped = finished[job_id]
            done.append(stepped or Outcome.ERROR)
        return done

    @property
    def pool(self) -> ThreadPoolExecutor:
        # Created on first use, so a forked worker child builds its own.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.io_threads, thread_name_prefix="advance"
            )
        return self._pool

    def advance(self, job_id: str, token: str, *, blocking: bool = False) -> Outcome:
        """Take one step for the job if ``token`` still holds its lease. Safe to call twice.

        ``blocking`` says this caller may hold a synchronous upstream call open for minutes
        (the sync worker). Otherwise such a submit is handed off to that worker.
        """
        job = self.leases.take(job_id, token)
        if job is None:
            return Outcome.SKIPPED
        with self.leases.renewals.holding([job]):
            return self._step(job, blocking=blocking)

    def _step(
        self,
        job: Job,
        *,
        blocking: bool,
        batch: Deferred | None = None,
        polled: PollResult | ProviderError | None = None,
    ) -> Outcome:
        """One step for a taken job; ``polled`` is its status answer when the batch already
        asked the upstream."""
        try:
            with about(job):
                if job.status == JobStatus.QUEUED:
                    return self.submitter.step(job, blocking=blocking)
                if job.status in FOLLOWED:
                    # Taken only with a follow-up (``_takeable``): cancelled, or past the
                    # client's deadline, while the upstream may still make the song.
                    return self.follow_up.step(job)
                return self.poller.step(job, batch=batch, polled=polled)
        except Exception:
            # The boundary: an unexpected fault (a bug, the database) must not strand the job.
            # Give the lease back and look again soon; the deadline bounds how long this lasts.
            log.exception("advancing job %s failed; it will be retried", job.id)
            self.leases.reschedule(job, delay=5.0)
            return Outcome.ERROR

"""Submitting a job: route it to an upstream account, send it, and record the answer.

A job is marked as being submitted (``submitting_since``) before the call and RUNNING after
it; a job found still marked was interrupted mid-call, and fails rather than being sent a
second time (the upstream may already have it, and would make and bill a second song).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.db import utcnow
from app.jobs.accounts import Accounts, NoRoute, Reserved, Wait
from app.jobs.errors import public_message
from app.jobs.leasing import Leases
from app.jobs.models import Job
from app.jobs.outcome import Outcome
from app.jobs.poll import Poller
from app.jobs.schedule import backoff
from app.jobs.status import JobStatus
from app.jobs.transitions import Transitions
from app.jobs.upstreams import Upstreams
from app.providers.base import ProviderError
from config import Settings, logs

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 4


class Submitter:
    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        upstreams: Upstreams,
        leases: Leases,
        transitions: Transitions,
        poller: Poller,
        handoff: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.upstreams = upstreams
        self.leases = leases
        self.lease = leases.lease
        self.transitions = transitions
        self.poller = poller
        # Sends a job (id, lease token) to the sync worker's queue (the Celery layer's).
        self.handoff = handoff

    def step(self, job: Job, *, blocking: bool) -> Outcome:
        """Send a taken QUEUED job to an upstream account, or say why not yet.

        ``blocking`` says this caller may hold a synchronous upstream call open for minutes
        (the sync worker). Otherwise such a submit is handed off to that worker.
        """
        if job.submitting_since is not None:
            # A previous attempt died between sending the job upstream and recording the
            # answer. The upstream may have it, and a second submit could make (and bill) a
            # second song.
            self.transitions.fail(
                job,
                "upstream_unknown",
                "a submit was interrupted; the upstream may or may not have the job, "
                "and it was not submitted twice",
            )
            return Outcome.FAILED
        if not blocking and self.handoff is not None:
            first = self.accounts.first_route(job)
            if (
                first is not None
                and self.upstreams.adapter(self.upstreams.config(first)).mode == "sync"
            ):
                # Holding a call open for minutes belongs to the sync worker's thread pool,
                # not to the slots that submit and poll every other job.
                # The sync worker takes a lease of its own; this one only covers the queue wait.
                if not self.leases.write(
                    job, {JobStatus.QUEUED}, lease_until=utcnow() + self.lease
                ):
                    return Outcome.LOST
                self.handoff(job.id, job.lease_token or "")
                return Outcome.HANDOFF
        # Whatever can fail before the call happens first: a fault here must not look like
        # an interrupted submit.
        request = self.upstreams.request(job)
        reservation = self.accounts.reserve(
            job, lease_for=self.upstreams.leases(), default_lease=self.lease
        )
        if isinstance(reservation, NoRoute):
            self.transitions.fail(
                job, "no_upstream", "no enabled upstream account serves this model"
            )
            return Outcome.FAILED
        if isinstance(reservation, Wait):
            # Every account is full or its breaker is open: wait QUEUED, not FAILED. The
            # scheduler wakes the job as soon as a slot frees.
            self.leases.write(
                job,
                {JobStatus.QUEUED},
                release=True,
                waiting_since=job.waiting_since or utcnow(),
                next_action_at=reservation.until,
            )
            return Outcome.WAITING
        if not isinstance(reservation, Reserved):
            return Outcome.LOST
        job.submit_attempts += 1
        job.submitting_since = utcnow()
        try:
            # Everything between the reservation and the call: if it fails, nothing was sent,
            # and the job must not look like an interrupted submit.
            account = self.upstreams.config(reservation.account)
            adapter = self.upstreams.adapter(account)
            first_poll = self.upstreams.poll_delay(job, 0.0)
        except Exception:
            self.leases.write(job, {JobStatus.QUEUED}, submitting_since=None)
            raise
        job.provider, job.account_id = account.provider, account.id
        logs.add(account=account.id)
        try:
            submission = adapter.submit(request)
        except ProviderError as exc:
            self._count_fault(account.id, exc)
            outcome = self._submit_failed(job, exc)
            if outcome is not Outcome.RETRY:
                # Cancelled during the call: whatever reached the upstream is not followed.
                self.leases.hand_back(job, upstream_done=True)
            return outcome
        now = utcnow()
        logs.add(generation_id=submission.generation_id)
        # The upstream has the job now: recording that must not be lost to a passing database
        # fault, or the job would look like an interrupted submit.
        if not self._move_hard(
            job,
            JobStatus.RUNNING,
            generation_id=submission.generation_id,
            started_at=now,
            submitting_since=None,
            error_code=None,
            error_message=None,
            # A synchronous upstream answered with the result: keep the lease for apply.
            release=submission.result is None,
            next_action_at=now + dt.timedelta(seconds=first_poll),
        ):
            # Cancelled during the call: the upstream has the job now, so follow it there
            # (tell it, then keep the account's slot until it ends). A synchronous answer
            # already carries the song, which nobody wants any more: it is not stored.
            return self.leases.hand_back(
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
            return self.poller.apply(job, submission.result)
        return Outcome.RUNNING

    def _submit_failed(self, job: Job, exc: ProviderError) -> Outcome:
        if exc.maybe_created:
            self.transitions.fail(
                job, "upstream_unknown", public_message(job.id, "upstream_unknown", exc.message)
            )
            return Outcome.FAILED
        if exc.retryable and job.submit_attempts < self.settings.submit_max_attempts:
            delay = backoff(job.submit_attempts, retry_after=exc.retry_after)
            log.info("job %s: submit failed (%s), retrying in %.1fs", job.id, exc.code, delay)
            # Nothing reached the upstream: the next attempt may take another route.
            written = self.leases.write(
                job,
                {JobStatus.QUEUED},
                submitting_since=None,
                error_code=exc.code,
                error_message=public_message(job.id, exc.code, exc.message),
                release=True,
                next_action_at=utcnow() + dt.timedelta(seconds=delay),
            )
            return Outcome.RETRY if written else Outcome.LOST
        self.transitions.fail(job, exc.code, public_message(job.id, exc.code, exc.message))
        return Outcome.FAILED

    def _count_fault(self, account_id: str, exc: ProviderError) -> None:
        # Only the upstream being broken counts: business errors and rate limits do not.
        transient = exc.retryable and exc.code != "upstream_rate_limited"
        if transient:
            self.accounts.record_failure(account_id)

    def _move_hard(self, job: Job, target: JobStatus, **values: Any) -> bool:
        """A move, retried through transient database faults (a restart, a deadlock)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self.transitions.move(job, target, **values)
            except SQLAlchemyError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.warning("job %s: write failed, retrying", job.id, exc_info=True)
                time.sleep(0.2 * 2**attempt)
        return False

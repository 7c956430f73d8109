"""Submitting a job: route it to an upstream account, send it, and record the answer.

A job is marked as being submitted (``submitting_since``, with its account slot) when it is
routed, marked again (``submit_sent_at``) once the connection to the upstream is open and the
request is about to leave, and is RUNNING after the answer. A job found marked but not sent
was interrupted before anything reached the upstream, and is simply submitted; one found sent
fails ``upstream_unknown`` rather than being sent a second time (the upstream may already have
it, and would make and bill a second song).
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
from app.jobs.previews import PreviewWriter, sniff_format
from app.jobs.schedule import backoff
from app.jobs.status import JobStatus
from app.jobs.transitions import Transitions
from app.jobs.upstreams import Upstreams, measured
from app.providers.base import ProviderError, Submission
from config import Settings, logs

log = logging.getLogger(__name__)

# How long the answer of an upstream that took the job is retried into the database: longer
# than a restart of it. Between tries the wait doubles up to RECORD_MAX_WAIT, so the write
# lands within seconds of the database coming back.
RECORD_FOR = 90.0
RECORD_MAX_WAIT = 2.0


class _Withdrawn(Exception):
    """The job stopped being ours (a cancel) after it was routed and before anything left."""


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
            if job.submit_sent_at is not None:
                # A previous attempt died after its request started to leave and before the
                # answer was recorded. The upstream may have it, and a second submit could
                # make (and bill) a second song. None of Chorus's upstreams can be asked
                # whether it has it (no idempotency key, no lookup by anything Chorus sent).
                self.transitions.fail(
                    job,
                    "upstream_unknown",
                    "a submit was interrupted; the upstream may or may not have the job, "
                    "and it was not submitted twice",
                    upstream_attempts=Job.upstream_attempts + 1,
                )
                return Outcome.FAILED
            # It died before anything left: the upstream never saw it. Free the slot and
            # submit it as if for the first time.
            log.info("job %s: a submit was interrupted before sending; submitting it", job.id)
            if not self.leases.write(job, {JobStatus.QUEUED}, submitting_since=None):
                return Outcome.LOST
            job.submitting_since = None
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
        # Whether this job failed on this account last time: a breaker counts jobs, not calls.
        failed_here_before = job.account_id == account.id and job.error_code not in (
            None,
            "upstream_rate_limited",
        )
        job.provider, job.account_id = account.provider, account.id
        sent: list[bool] = []
        preview = (
            PreviewWriter(self.transitions.db, job.id, lambda head: self._begin(job, head))
            if request.stream
            else None
        )

        def mark_sent() -> None:
            # Written once the connection is open, before the first byte leaves: a crash
            # from here on may have reached the upstream.
            if not self.leases.write(job, {JobStatus.QUEUED}, submit_sent_at=utcnow()):
                raise _Withdrawn
            sent.append(True)

        logs.add(account=account.id)
        try:
            with measured(account.id, "submit"):
                submission = adapter.send(
                    request, mark_sent, preview.add if preview is not None else None
                )
        except _Withdrawn:
            # A cancel took the job meanwhile (before anything left, or while its audio was
            # streaming in: the stream is dropped), and there is nothing to follow.
            return self.leases.hand_back(job, upstream_done=True)
        except ProviderError as exc:
            self._count_fault(account.id, exc, repeat=failed_here_before)
            if job.status == JobStatus.RUNNING:
                return self._stream_failed(job, exc)
            outcome = self._submit_failed(job, exc, sent=bool(sent))
            if outcome is not Outcome.RETRY:
                # Cancelled during the call: whatever reached the upstream is not followed.
                self.leases.hand_back(job, upstream_done=True)
            return outcome
        except Exception:
            if not sent:
                # Nothing left (the mark itself failed, say): the slot is given back.
                self.leases.write(job, {JobStatus.QUEUED}, submitting_since=None)
            raise
        now = utcnow()
        logs.add(generation_id=submission.generation_id)
        if job.status == JobStatus.RUNNING:
            # Streamed: the job went RUNNING with its first piece of audio (``_begin``).
            return self._finish_running(job, account.id, submission)
        # The upstream has the job now: recording that must not be lost to a passing database
        # fault (a restart), or the job would look like an interrupted submit.
        if not self._record(
            job,
            generation_id=submission.generation_id,
            **_taken_upstream(now),
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
        return self._finish_running(job, account.id, submission)

    def _finish_running(self, job: Job, account_id: str, submission: Submission) -> Outcome:
        try:
            self.accounts.record_success(account_id)
        except SQLAlchemyError:
            log.warning("could not record a success for account %s", account_id, exc_info=True)
        if submission.result is not None:
            return self.poller.apply(job, submission.result)
        return Outcome.RUNNING

    def _begin(self, job: Job, head: bytes) -> bool:
        """A streamed song's first audio arrived: the upstream has the job, which is RUNNING
        from now on, with an early preview (``app.jobs.previews``). The lease is kept: the
        call goes on. Raises _Withdrawn when a cancel took the job meanwhile."""
        now = utcnow()
        setting = (job.request or {}).get("audio_setting") or {}
        fmt = sniff_format(head, setting.get("format"))
        if not self._record(
            job,
            **_taken_upstream(now),
            preview_format=fmt,
            # Looked at again only if this worker dies before the call ends.
            next_action_at=now + dt.timedelta(seconds=self.upstreams.poll_delay(job, 0.0)),
        ):
            raise _Withdrawn
        job.status, job.started_at, job.preview_format = JobStatus.RUNNING, now, fmt
        job.submitting_since = job.submit_sent_at = None
        return True

    def _stream_failed(self, job: Job, exc: ProviderError) -> Outcome:
        """A stream that broke after its audio began: the upstream took (and may bill) the
        job, whose status cannot go back to QUEUED; sending it again could bill twice."""
        message = public_message(job.id, exc.code, exc.message)
        if not self.transitions.fail(job, exc.code, message):
            return self.leases.hand_back(job, upstream_done=True)
        return Outcome.FAILED

    def _submit_failed(self, job: Job, exc: ProviderError, *, sent: bool) -> Outcome:
        # What failed before the request left reached nothing, whatever the error says.
        maybe_created = sent and exc.maybe_created
        billed = sent and (exc.maybe_created or exc.maybe_billed)
        counted: dict[str, Any] = {}
        if billed:
            counted["upstream_attempts"] = Job.upstream_attempts + 1
        if maybe_created:
            self.transitions.fail(
                job,
                "upstream_unknown",
                public_message(job.id, "upstream_unknown", exc.message),
                **counted,
            )
            return Outcome.FAILED
        if exc.retryable and job.submit_attempts < self.settings.submit_max_attempts:
            delay = backoff(job.submit_attempts, retry_after=exc.retry_after)
            log.info("job %s: submit failed (%s), retrying in %.1fs", job.id, exc.code, delay)
            if billed:
                log.warning(
                    "job %s: submitting again after %s, which the upstream may have billed",
                    job.id,
                    exc.code,
                )
            # The upstream did not take the job: the next attempt may take another route.
            written = self.leases.write(
                job,
                {JobStatus.QUEUED},
                submitting_since=None,
                submit_sent_at=None,
                error_code=exc.code,
                error_message=public_message(job.id, exc.code, exc.message),
                release=True,
                next_action_at=utcnow() + dt.timedelta(seconds=delay),
                **counted,
            )
            return Outcome.RETRY if written else Outcome.LOST
        self.transitions.fail(
            job, exc.code, public_message(job.id, exc.code, exc.message), **counted
        )
        return Outcome.FAILED

    def _count_fault(self, account_id: str, exc: ProviderError, *, repeat: bool) -> None:
        # Only the upstream being broken counts: business errors and rate limits do not.
        transient = exc.retryable and exc.code != "upstream_rate_limited"
        if transient:
            self.accounts.record_failure(account_id, repeat=repeat)

    def _record(self, job: Job, **values: Any) -> bool:
        """Move a job the upstream took to RUNNING, retried through database faults for
        ``RECORD_FOR`` seconds; False if a cancel took the job meanwhile.

        The write is guarded by the lease. If the lease lapsed while the database was away and
        the scheduler leased the job again, but nobody acted on it yet, the lease is taken
        back (``Leases.retake_sent``) and the write made; what the upstream answered is never dropped
        for a lease that only lapsed.
        """
        deadline = time.monotonic() + RECORD_FOR
        wait = 0.2
        while True:
            try:
                if self.transitions.move(job, JobStatus.RUNNING, **values):
                    return True
                if not self.leases.retake_sent(job):
                    return False
            except SQLAlchemyError:
                if time.monotonic() >= deadline:
                    log.error(
                        "job %s: upstream %s took it as %r, and that could not be recorded",
                        job.id,
                        job.account_id,
                        values.get("generation_id"),
                    )
                    raise
                log.warning("job %s: recording the submit failed, retrying", job.id, exc_info=True)
                time.sleep(wait)
                wait = min(wait * 2, RECORD_MAX_WAIT)


def _taken_upstream(now: dt.datetime) -> dict[str, Any]:
    """What recording "the upstream has the job" writes, whether its answer came whole or its
    first audio did: the job runs from ``now``, its submit is over and one more attempt may
    have been billed."""
    return {
        "started_at": now,
        "submitting_since": None,
        "submit_sent_at": None,
        "upstream_attempts": Job.upstream_attempts + 1,
        "error_code": None,
        "error_message": None,
    }

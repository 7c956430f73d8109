"""Polling a RUNNING job: ask its upstream how the generation goes, and act on the answer.

A pending answer only sets when to look next; a failed one fails the job; a success has its
audio stored (``app.jobs.results``) and the job SUCCEEDED. In a batch (``Deferred``) the two
common answers, "still pending" and "done", are written for the whole batch at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from app.db import utcnow
from app.jobs.errors import public_message
from app.jobs.leasing import Leases
from app.jobs.models import Job
from app.jobs.outcome import Outcome
from app.jobs.results import Results
from app.jobs.schedule import backoff
from app.jobs.status import JobStatus
from app.jobs.transitions import Finished, Transitions
from app.jobs.upstreams import Upstreams, count_batch, measured
from app.providers.base import PollResult, PollState, ProviderError
from app.storage import AudioError
from config import Settings

log = logging.getLogger(__name__)


@dataclass
class Deferred:
    """The writes a batch's steps leave for the engine to make together (the steps run on
    threads of their own; list.append is atomic)."""

    pending: list[tuple[Job, dt.datetime]] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)


class Poller:
    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        leases: Leases,
        transitions: Transitions,
        results: Results,
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.leases = leases
        self.transitions = transitions
        self.results = results

    def step(
        self,
        job: Job,
        *,
        batch: Deferred | None = None,
        polled: PollResult | ProviderError | None = None,
    ) -> Outcome:
        account = self.upstreams.job_account(job)
        if account is None or job.generation_id is None:
            self.transitions.fail(job, "upstream_unknown", "the job's upstream account is gone")
            return Outcome.FAILED
        try:
            if isinstance(polled, ProviderError):
                raise polled
            result = polled
            if result is None:
                with measured(account.id, "poll"):
                    result = self.upstreams.adapter(account).poll(job.generation_id)
        except ProviderError as exc:
            # The breaker guards new submits only: a healthy poll must not close a breaker
            # that failing submits opened, nor a flaky poll open one.
            return self._failed(job, exc)
        return self.apply(job, result, batch=batch)

    def _failed(self, job: Job, exc: ProviderError) -> Outcome:
        if exc.code == "upstream_invalid_response":
            count = job.invalid_responses + 1
            if count >= self.settings.invalid_response_limit:
                detail = f"{count} unreadable answers in a row; last: {exc.message}"
                self.transitions.fail(job, exc.code, public_message(job.id, exc.code, detail))
                return Outcome.FAILED
            self.leases.reschedule(
                job,
                delay=backoff(count, base=1.0),
                invalid_responses=count,
                poll_count=Job.poll_count + 1,
            )
            return Outcome.RETRY
        if not exc.retryable:
            self.transitions.fail(job, exc.code, public_message(job.id, exc.code, exc.message))
            return Outcome.FAILED
        delay = backoff(job.poll_count + 1, base=1.0, cap=30.0, retry_after=exc.retry_after)
        self.leases.reschedule(job, delay=delay, poll_count=Job.poll_count + 1)
        return Outcome.RETRY

    def apply(self, job: Job, result: PollResult, *, batch: Deferred | None = None) -> Outcome:
        if result.state is PollState.PENDING:
            elapsed = (utcnow() - (job.started_at or job.created_at)).total_seconds()
            if batch is not None:
                # Written with the rest of the batch by advance_many (list.append is atomic).
                due = utcnow() + dt.timedelta(seconds=self.upstreams.poll_delay(job, elapsed))
                batch.pending.append((job, due))
                return Outcome.PENDING
            if not self.leases.reschedule(
                job,
                delay=self.upstreams.poll_delay(job, elapsed),
                poll_count=Job.poll_count + 1,
                invalid_responses=0,
            ):
                return self.leases.hand_back(job, upstream_done=False)
            return Outcome.PENDING
        if result.state is PollState.FAILED:
            if not self.transitions.fail(
                job,
                result.error_code or "upstream_failed",
                result.error_message or "the upstream reported a failed generation",
                poll_count=Job.poll_count + 1,
            ):
                return self.leases.hand_back(job, upstream_done=True)
            return Outcome.FAILED
        try:
            key, info = self.results.store(job, result)
        except AudioError as exc:
            if exc.retryable:
                self.leases.reschedule(
                    job, delay=backoff(job.poll_count + 1, base=1.0), poll_count=Job.poll_count + 1
                )
                return Outcome.RETRY
            code = "upstream_invalid_result"
            if exc.gone:
                account = self.upstreams.job_account(job)
                code = self.upstreams.adapter(account).gone_audio_code if account else code
            message = public_message(job.id, code, str(exc))
            self.transitions.fail(job, code, message, poll_count=Job.poll_count + 1)
            return Outcome.FAILED
        if batch is not None:
            batch.finished.append(Finished(job, key, info))
            return Outcome.SUCCEEDED
        return self.results.succeed(Finished(job, key, info))

    def poll_together(self, jobs: list[Job]) -> dict[str, PollResult | ProviderError]:
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
                account = self.upstreams.job_account(group[0])
                adapter = self.upstreams.adapter(account) if account is not None else None
                if account is None or adapter is None or not adapter.polls_together:
                    continue
                # As many calls in flight at once as the process has I/O threads.
                for start in range(0, len(group), width):
                    chunk = group[start : start + width]
                    with measured(account.id, "poll_batch"):
                        results = adapter.poll_many([job.generation_id or "" for job in chunk])
                    count_batch(account.id, results)
                    answers.update(zip((job.id for job in chunk), results, strict=True))
            except Exception:
                # A bug here must not stall the batch: its jobs are polled one at a time.
                log.exception("polling %d job(s) together failed", len(group))
        return answers

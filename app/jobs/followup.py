"""After a cancel: following a cancelled job's upstream until its generation ends.

The same follows a job FAILED because its client's deadline (``Cancel-After``) passed: the
client's word ended it as a cancel would.

The client's view is final (CANCELLED or FAILED, money released); a follow-up only tells the upstream
where its protocol allows, and keeps the account's slot until the upstream's generation
ends, so the account is not handed a second song while busy. Nothing here changes the
status, moves money or stores audio.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import update

from app.db import utcnow
from app.jobs.leasing import Leases
from app.jobs.models import FOLLOWUP_CANCEL, FOLLOWUP_WATCH, Job
from app.jobs.outcome import Outcome
from app.jobs.schedule import backoff
from app.jobs.status import FOLLOWED
from app.jobs.upstreams import Upstreams, measured
from app.providers.base import PollState, ProviderError

log = logging.getLogger(__name__)


class FollowUp:
    def __init__(self, upstreams: Upstreams, leases: Leases) -> None:
        self.upstreams = upstreams
        self.leases = leases

    def step(self, job: Job) -> Outcome:
        """One step for a cancelled job whose upstream may still be making its song."""
        account = self.upstreams.job_account(job)
        if account is None or job.generation_id is None or job.deadline_at <= utcnow():
            # Nothing to follow: no upstream id (the submit never answered), or past the point
            # where the engine gives any generation up.
            self._end(job)
            return Outcome.CANCELLED
        adapter = self.upstreams.adapter(account)
        if job.upstream_followup == FOLLOWUP_CANCEL:
            try:
                with measured(account.id, "cancel"):
                    adapter.cancel(job.generation_id)
            except ProviderError as exc:
                # The cancel stands either way: the upstream just finishes a song nobody reads.
                log.warning("job %s: could not tell the upstream of the cancel: %s", job.id, exc)
        try:
            with measured(account.id, "poll"):
                result = adapter.poll(job.generation_id)
        except ProviderError as exc:
            if not exc.retryable:
                self._end(job)
                return Outcome.CANCELLED
            delay = backoff(job.poll_count + 1, base=1.0, cap=30.0, retry_after=exc.retry_after)
            self._watch(job, delay)
            return Outcome.FOLLOWING
        if result.state is PollState.PENDING:
            elapsed = (utcnow() - (job.started_at or job.created_at)).total_seconds()
            self._watch(job, self.upstreams.poll_delay(job, elapsed))
            return Outcome.FOLLOWING
        self._end(job)
        return Outcome.CANCELLED

    def give_up_overdue(self, now: dt.datetime) -> None:
        """Past its deadline an upstream generation is as good as dead: stop following an
        ended job's, so its account slot comes back even if no follow-up ran."""
        with self.leases.db.transaction() as session:
            session.execute(
                update(Job)
                .where(
                    Job.status.in_(sorted(FOLLOWED)),
                    Job.deadline_at < now,
                    Job.upstream_followup.is_not(None),
                )
                .values(upstream_followup=None, next_action_at=None)
                .execution_options(synchronize_session=False)
            )

    def _watch(self, job: Job, delay: float) -> bool:
        return self.leases.write(
            job,
            FOLLOWED,
            release=True,
            upstream_followup=FOLLOWUP_WATCH,
            poll_count=Job.poll_count + 1,
            next_action_at=utcnow() + dt.timedelta(seconds=delay),
        )

    def _end(self, job: Job) -> bool:
        return self.leases.write(
            job, FOLLOWED, release=True, upstream_followup=None, next_action_at=None
        )

"""The lifecycle's own hooks on the one status writer (``app.jobs.transitions``).

In the change's transaction: the money (a job that ends captures its hold on success and
releases it otherwise). After the commit: the change counted (Prometheus, only once it
stands); the requests waiting on a job that ended (``Prefer: wait``) are woken, and read the
new row; and, for a writer outside the engine, the scheduler's doorbell rings. The webhook outbox's hook lives with the webhooks
(``app.webhooks.outbox.write_outbox``); ``app.wiring.writer`` registers them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app import metrics
from app.doorbell import Doorbell
from app.jobs.events import EVENTS
from app.jobs.logfields import job_fields
from app.jobs.status import JobStatus
from app.jobs.transitions import AfterCommit, Change
from app.jobs.waiting import TerminalNotifier
from app.money import ledger
from app.money.ledger import CAPTURE, RELEASE
from config import logs

log = logging.getLogger("chorus.jobs")


def log_changes(changes: Sequence[Change]) -> None:
    """One line per committed change of status, with the job's ids (and, for a failure, its
    error code): a job's id finds its whole story in the logs. What the step learnt and bound
    before writing (the generation id of a submit) is known here too."""
    for change in changes:
        fields = {**logs.current(), **job_fields(change.job), "status": str(change.status)}
        if change.error_code is not None:
            fields["error_code"] = change.error_code
        log.info("job %s %s", change.job.id, change.status, extra=fields)


def settle_money(session: Session, changes: Sequence[Change]) -> None:
    for change in changes:
        if change.status.terminal:
            ledger.settle(session, change.job.id, capture=change.status == JobStatus.SUCCEEDED)


def count_changes(changes: Sequence[Change]) -> None:
    """Count committed changes by model, status and error, and the money they moved: a
    job's hold is captured or released exactly when it ends (``settle_money``)."""
    ended: dict[str, list[tuple[str | None, int]]] = {CAPTURE: [], RELEASE: []}
    for change in changes:
        job = change.job
        metrics.JOB_CHANGES.labels(job.model_name, change.status, change.error_code or "").inc()
        if change.status.terminal:
            kind = CAPTURE if change.status == JobStatus.SUCCEEDED else RELEASE
            ended[kind].append((job.currency, job.price))
    for kind, entries in ended.items():
        metrics.count_money(kind, entries)


def wake_waiters(notifier: TerminalNotifier) -> AfterCommit:
    def wake(changes: Sequence[Change]) -> None:
        notifier.publish([change.job.id for change in changes if change.status.terminal])

    return wake


def announce_events(notifier: TerminalNotifier) -> AfterCommit:
    """Tell the web processes' event tails that events were committed (``record_changes``
    wrote one per change): they read them at once rather than at their next poll."""

    def announce(changes: Sequence[Change]) -> None:
        notifier.publish([change.job.id for change in changes])

    return announce


def ring_doorbell(bell: Doorbell) -> AfterCommit:
    """Tell the scheduler of a committed change it must act on: once per commit, however many
    jobs it changed.

    The dispatcher has work after a change that ended a job (a freed account slot, and its
    event) or that entered a state with an event (its outbox row, if the job has a target).
    Whether a row was actually written is not known here without a query, which would cost
    more than the ring it saves. The engine rings once per batch for everything its steps
    wrote, so its writer has no such hook (``app.wiring``).
    """

    def ring(changes: Sequence[Change]) -> None:
        if any(change.status.terminal or change.status in EVENTS for change in changes):
            bell.ring()

    return ring

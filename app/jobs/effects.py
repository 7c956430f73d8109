"""What every change of a job's status carries: hooks on the one writer (``app.jobs.transitions``).

In the change's transaction: the money (a job that ends captures its hold on success and
releases it otherwise) and the webhook outbox (the delivery row is the event: it exists
exactly when the change does). After the commit: the requests waiting on a job that ended
(``Prefer: wait``) are woken, and read the new row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.db import Database
from app.jobs.status import JobStatus
from app.jobs.transitions import AfterCommit, Change, Transitions
from app.jobs.waiting import TerminalNotifier
from app.money import ledger
from app.webhooks import outbox


def settle_money(session: Session, changes: Sequence[Change]) -> None:
    for change in changes:
        if change.status.terminal:
            ledger.settle(session, change.job.id, capture=change.status == JobStatus.SUCCEEDED)


def write_outbox(session: Session, changes: Sequence[Change]) -> None:
    for change in changes:
        outbox.enqueue_for(session, change.job, change.status, change.at)


def wake_waiters(notifier: TerminalNotifier) -> AfterCommit:
    def wake(changes: Sequence[Change]) -> None:
        notifier.publish([change.job.id for change in changes if change.status.terminal])

    return wake


def writer(db: Database, notifier: TerminalNotifier) -> Transitions:
    """The status writer with every side effect Chorus has."""
    transitions = Transitions(db)
    transitions.on_change(settle_money)
    transitions.on_change(write_outbox)
    transitions.after_commit(wake_waiters(notifier))
    return transitions

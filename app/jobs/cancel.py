"""Cancelling a job at its tenant's request."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.jobs.errors import NotCancellable
from app.jobs.models import Job
from app.jobs.queries import get_job
from app.jobs.transitions import Transitions
from app.tenancy.keys import KeyHolder


def cancel_job(transitions: Transitions, session: Session, key: KeyHolder, job_id: str) -> Job:
    """CANCEL a QUEUED or RUNNING job of the key's org, releasing its hold, in a transaction
    of its own (``Transitions.cancel``); ``JobNotFound`` for an unknown or foreign id,
    ``NotCancellable`` for a job that already ended. ``session`` only reads the job a refused
    cancel found.

    A cancel racing a worker's last write ends the job once: whichever commits first wins,
    and the other matches no row.
    """
    cancelled = transitions.cancel(key.org_id, job_id)
    if cancelled is None:
        job = get_job(session, key, job_id)
        raise NotCancellable(job_id, job.status)
    return cancelled

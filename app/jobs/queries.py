"""Reading an org's jobs: one by id, a page of them, how many are in progress."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from app.jobs.errors import JobNotFound
from app.jobs.models import Job
from app.jobs.status import ACTIVE
from app.tenancy.keys import KeyHolder


def get_job(session: Session, key: KeyHolder, job_id: str) -> Job:
    """The key's org's job ``job_id``, or ``JobNotFound``."""
    # No id is longer, and Postgres refuses a NUL in a string: both are simply unknown.
    job = session.get(Job, job_id) if len(job_id) <= 40 and "\x00" not in job_id else None
    if job is None or job.org_id != key.org_id:
        raise JobNotFound(job_id)
    return job


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    has_more: bool


def list_jobs(
    session: Session, key: KeyHolder, *, limit: int, after: str | None, status: str | None
) -> Page:
    """The org's jobs, newest first; ``after`` is the id of the last job of the previous page.

    Ids are ``luid_`` + a ULID, so ordering by id is ordering by creation, and the cursor
    stays valid however many jobs arrive meanwhile.
    """
    query = select(Job).where(Job.org_id == key.org_id)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        query = query.where(Job.id < after)
    # One row more than asked says whether another page follows.
    jobs = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return Page(jobs[:limit], len(jobs) > limit)


def count_active(session: Session | Connection, org_id: int) -> int:
    """The org's queued + running jobs."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.org_id == org_id, Job.status.in_(list(ACTIVE)))
        )
        or 0
    )

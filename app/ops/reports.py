"""Aggregates an operator reads over a window: jobs ended per minute, failures by code.

Both read ``finished_at``, which every terminal status sets, so a job counts in the minute
it ended, whatever its age.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import UTCDateTime, utcnow
from app.jobs.models import Job
from app.jobs.status import TERMINAL, JobStatus

THROUGHPUT_WINDOW = dt.timedelta(hours=1)
FAILURES_WINDOW = dt.timedelta(hours=24)
MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Minute:
    start: dt.datetime
    ended: int


def throughput(session: Session, now: dt.datetime | None = None) -> list[Minute]:
    """Jobs that reached a terminal status in each whole minute of the last hour, oldest
    first, the minute in progress last; minutes with none are there with 0."""
    now = now or utcnow()
    current = now.replace(second=0, microsecond=0)
    first = current - THROUGHPUT_WINDOW + MINUTE
    minute = func.date_trunc("minute", Job.finished_at, type_=UTCDateTime())
    counted = dict(
        session.execute(
            select(minute, func.count())
            .where(Job.status.in_(TERMINAL), Job.finished_at >= first, Job.finished_at <= now)
            .group_by(minute)
        ).all()
    )
    starts = [first + i * MINUTE for i in range(int(THROUGHPUT_WINDOW / MINUTE))]
    return [Minute(start, int(counted.get(start, 0))) for start in starts]


def failures_by_code(session: Session, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """FAILED jobs of the last 24 hours by error code, the most frequent first."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.error_code, func.count(), func.max(Job.finished_at))
        .where(Job.status == JobStatus.FAILED, Job.finished_at >= now - FAILURES_WINDOW)
        .group_by(Job.error_code)
        .order_by(func.count().desc(), Job.error_code)
    ).all()
    return [{"code": code, "jobs": int(n), "last": last} for code, n, last in rows]

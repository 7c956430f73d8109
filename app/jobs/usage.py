"""Usage by model and day: jobs, seconds of audio, and what was charged."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.status import JobStatus


def created_between(start: dt.date, end: dt.date) -> list[ColumnElement[bool]]:
    """Jobs created on days ``start`` to ``end`` inclusive (UTC)."""
    return [
        Job.created_at >= dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC),
        Job.created_at < dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
    ]


def totals() -> list[Any]:
    """The report's sums over a group of jobs: ``jobs``, ``succeeded``, ``audio_ms`` and
    ``charged``."""
    succeeded = Job.status == JobStatus.SUCCEEDED
    return [
        func.count().label("jobs"),
        func.sum(case((succeeded, 1), else_=0)).label("succeeded"),
        func.sum(case((succeeded, Job.audio_duration_ms), else_=0)).label("audio_ms"),
        # Only successes are charged: failures and cancels are released.
        func.sum(case((succeeded, Job.price), else_=0)).label("charged"),
    ]


def usage(session: Session, org_id: int, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """Rows for jobs created on days ``start`` to ``end`` inclusive (UTC), oldest day first."""
    day = func.date(Job.created_at)
    rows = session.execute(
        select(day.label("day"), Job.model_name, Job.currency, *totals())
        .where(Job.org_id == org_id, *created_between(start, end))
        .group_by(day, Job.model_name, Job.currency)
        .order_by(day, Job.model_name)
    ).all()
    return [
        {
            "date": str(row.day),
            "model": row.model_name,
            "jobs": int(row.jobs),
            "succeeded": int(row.succeeded or 0),
            "audio_seconds": round(int(row.audio_ms or 0) / 1000, 3),
            "amount": int(row.charged or 0),
            "currency": row.currency,
        }
        for row in rows
    ]

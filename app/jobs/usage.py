"""Usage by model and day: jobs, seconds of audio, and what was charged."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.status import JobStatus


def usage(session: Session, org_id: int, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """Rows for jobs created on days ``start`` to ``end`` inclusive (UTC), oldest day first."""
    day = func.date(Job.created_at)
    succeeded = Job.status == JobStatus.SUCCEEDED
    rows = session.execute(
        select(
            day.label("day"),
            Job.model_name,
            Job.currency,
            func.count().label("jobs"),
            func.sum(case((succeeded, 1), else_=0)).label("succeeded"),
            func.sum(case((succeeded, Job.audio_duration_ms), else_=0)).label("audio_ms"),
            # Only successes are charged: failures and cancels are released.
            func.sum(case((succeeded, Job.price), else_=0)).label("charged"),
        )
        .where(
            Job.org_id == org_id,
            Job.created_at >= dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC),
            Job.created_at
            < dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
        )
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

"""How far along a job is, as clients are told: a fraction done and when it should end.

Upstreams report no progress of their own, so the estimate is the model's expected run time
(``expected_seconds`` in the catalog) laid over the time the job has been RUNNING. It never says
1.0 before the job has SUCCEEDED: a song that runs late stays at 0.99 with its end moved to now.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from app.jobs.status import JobStatus

# The most a job still running is said to have done.
RUNNING_CAP = 0.99


@dataclass(frozen=True)
class Estimate:
    progress: float | None  # 0.0-1.0; None when nothing is known (QUEUED, FAILED, CANCELLED)
    eta: dt.datetime | None  # when the job should end, while it runs


UNKNOWN = Estimate(None, None)


def estimate(
    status: JobStatus | str,
    started_at: dt.datetime | None,
    expected_seconds: float | None,
    now: dt.datetime,
) -> Estimate:
    status = JobStatus(status)
    if status == JobStatus.SUCCEEDED:
        return Estimate(1.0, None)
    if status != JobStatus.RUNNING or started_at is None or not expected_seconds:
        return UNKNOWN
    elapsed = max((now - started_at).total_seconds(), 0.0)
    progress = min(elapsed / expected_seconds, RUNNING_CAP)
    end = started_at + dt.timedelta(seconds=expected_seconds)
    return Estimate(round(progress, 4), max(end, now))

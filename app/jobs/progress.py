"""How far along a job is, as clients are told: a fraction done and when it should end.

Upstreams report no progress of their own, so the estimate is the model's expected run time
(``expected_seconds`` in the catalog) laid over the time the job has been RUNNING. It never says
1.0 before the job has SUCCEEDED: a song that runs late stays at 0.99 with its end moved to now.

A QUEUED job has no progress but a place in its line (``queue_position``): the jobs queued
before it for the same upstream account, or for the same model before an account is chosen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, func, select, text

from app.cache import TTLCache
from app.catalog.models import Model
from app.db import HotStatement
from app.jobs.models import QUEUED_SQL, Job, JobRecord
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


# ---------------------------------------------------------------------- reading them for a job

# How many QUEUED jobs are ahead of one (created earlier: job ids sort by creation) on its
# account, or on its model before an account is chosen. Each count runs on a partial index
# of QUEUED rows (``ix_jobs_queued_account``, ``ix_jobs_queued_model``); the predicate is
# written as those indexes say it, not as a parameter, so a prepared plan still uses them.
_AHEAD_ON_ACCOUNT = HotStatement(
    select(func.count())
    .select_from(Job)
    .where(text(QUEUED_SQL), Job.account_id == bindparam("account_id"), Job.id < bindparam("id"))
)
_AHEAD_ON_MODEL = HotStatement(
    select(func.count())
    .select_from(Job)
    .where(text(QUEUED_SQL), Job.model_id == bindparam("model_id"), Job.id < bindparam("id"))
)
_EXPECTED = HotStatement(select(Model.expected_seconds).where(Model.id == bindparam("model_id")))


def queue_position(engine: Engine, job: JobRecord) -> int | None:
    """How many jobs are ahead of a QUEUED ``job`` in its line (0: it is next); None for a
    job that is not QUEUED, which costs no query."""
    if job.status != JobStatus.QUEUED:
        return None
    if job.account_id is not None:
        row = _AHEAD_ON_ACCOUNT.first(engine, {"account_id": job.account_id, "id": job.id})
    else:
        row = _AHEAD_ON_MODEL.first(engine, {"model_id": job.model_id, "id": job.id})
    return int(row[0]) if row is not None else 0


class ExpectedSeconds:
    """Each model's ``expected_seconds``, per process: read for a RUNNING job only, and kept
    ``ttl`` seconds, so a catalog change shows within that."""

    def __init__(self, engine: Engine, ttl: float = 30.0) -> None:
        self.engine = engine
        self._cache: TTLCache[float | None] = TTLCache(ttl=ttl)

    def __call__(self, model_id: int) -> float | None:
        return self._cache.get(model_id, lambda: self._load(model_id))

    def _load(self, model_id: int) -> float | None:
        row = _EXPECTED.first(self.engine, {"model_id": model_id})
        return float(row[0]) if row is not None and row[0] is not None else None


def for_job(job: JobRecord, expected: Callable[[int], float | None], now: dt.datetime) -> Estimate:
    """``estimate`` for a job row; the model's expected time is looked up only while it runs."""
    if job.status != JobStatus.RUNNING:
        return estimate(job.status, job.started_at, None, now)
    return estimate(job.status, job.started_at, expected(job.model_id), now)

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
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Engine,
    FromClause,
    Table,
    bindparam,
    case,
    func,
    literal_column,
    select,
)

from app.cache import TTLCache
from app.catalog.models import Model
from app.db import HotStatement
from app.jobs.models import Job, JobRecord
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

# The name a statement returns a row's queue position under.
POSITION = "queue_position"
# Counted up to this many: the count is on every submit and every GET of a queued job, and a
# line of thousands would cost each of them a scan of it. POSITION_CAP means "this many or more".
POSITION_CAP = 100

_JOBS = cast(Table, Job.__table__)
_AHEAD = _JOBS.alias("ahead")
# Written as the partial indexes' predicate says it, not as a parameter: a prepared
# statement's generic plan can then still use them.
_QUEUED: ColumnElement[str] = literal_column("'QUEUED'")


def ahead_of(job: FromClause | None = None) -> ColumnElement[int | None]:
    """The queue position of a job row, as an expression a statement can return with it:
    how many QUEUED jobs created earlier (job ids sort by creation) wait on its account, or,
    before one is chosen, on its model; NULL for a job not QUEUED, which then costs no count.
    The row is ``job``'s of a SELECT, or (None) the statement's own ``jobs`` row, as an
    INSERT's RETURNING has it (SQLAlchemy would not correlate a subquery there).

    Each count runs on a partial index of QUEUED rows (``ix_jobs_queued_account``,
    ``ix_jobs_queued_model``), so it stays the size of the queue however many jobs ended, and
    stops at ``POSITION_CAP``.
    """

    def of(name: str) -> ColumnElement[Any]:
        return job.c[name] if job is not None else literal_column(f"jobs.{name}")

    def line(name: str) -> ColumnElement[int]:
        ahead = (
            select(_AHEAD.c.id)
            .where(_AHEAD.c.status == _QUEUED, _AHEAD.c[name] == of(name), _AHEAD.c.id < of("id"))
            .limit(literal_column(str(POSITION_CAP)))
        )
        if job is not None:
            ahead = ahead.correlate(job)
        count = select(func.count()).select_from(ahead.subquery("ahead_ids"))
        return (count.correlate(job) if job is not None else count).scalar_subquery()

    queued = of("status") == _QUEUED
    return case(
        (queued & of("account_id").is_(None), line("model_id")),
        (queued, line("account_id")),
        else_=None,
    )


# A job row's position alone, for a row read without it (the list, a row after a wait).
_POSITION = HotStatement(select(ahead_of(_JOBS)).where(_JOBS.c.id == bindparam("id")))
_EXPECTED = HotStatement(select(Model.expected_seconds).where(Model.id == bindparam("model_id")))


def queue_position(engine: Engine, job: JobRecord) -> int | None:
    """How many jobs are ahead of a QUEUED ``job`` in its line (0: it is next); None for a
    job that is not QUEUED, which costs no query. A row read with ``ahead_of`` (the GET's,
    the submit's) carries it as ``queue_position``: no second statement."""
    if job.status != JobStatus.QUEUED:
        return None
    # A Row, or the hot path's named tuple (``HotStatement``): either names its fields.
    if POSITION in getattr(job, "_fields", ()):
        known = getattr(job, POSITION)
        return int(known) if known is not None else None
    row = _POSITION.first(engine, {"id": job.id})
    return int(row[0]) if row is not None and row[0] is not None else None


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

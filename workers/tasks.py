"""Celery tasks. They take ids (and lease tokens), never objects, and are safe to run twice."""

from __future__ import annotations

import datetime as dt
import logging
from itertools import groupby
from typing import Any, cast

from celery import Task, shared_task

from app.db import utcnow
from app.jobs.engine import DueClaim

log = logging.getLogger(__name__)

# Jobs due within the same slice of time travel in one message; the slice bounds the lag
# that batching adds.
BUCKET_SECONDS = 0.1
BATCH_SIZE = 50


def _app(task: Task) -> Any:
    return task.app


@shared_task(name="chorus.tick", bind=True, ignore_result=True)
def tick(self: Task) -> int:
    """The sweeper: fail overdue jobs, lease due ones and hand them to workers."""
    app = _app(self)
    engine = app.engine
    expired = engine.expire_overdue()
    if expired:
        log.info("%d job(s) passed their deadline", expired)
    claims = engine.claim_due(
        lookahead=app.settings.tick_seconds * 2, limit=app.settings.claim_batch
    )
    dispatch(claims)
    return len(claims)


def dispatch(claims: list[DueClaim]) -> None:
    now = utcnow()

    def bucket(claim: DueClaim) -> float:
        return claim.due_at.timestamp() // BUCKET_SECONDS

    for _, group in groupby(sorted(claims, key=lambda c: c.due_at), key=bucket):
        items = list(group)
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            eta = max(c.due_at for c in batch)
            options: dict[str, Any] = {}
            if eta > now + dt.timedelta(milliseconds=20):
                options["eta"] = eta
            advance_jobs.apply_async(args=([[c.job_id, c.token] for c in batch],), **options)


@shared_task(name="chorus.advance_jobs", bind=True, ignore_result=True)
def advance_jobs(self: Task, claims: list[list[str]]) -> list[str]:
    """Take one step (submit or poll) for each (job id, lease token); stale claims do nothing."""
    engine = _app(self).engine
    return cast(list[str], engine.advance_many((job_id, token) for job_id, token in claims))

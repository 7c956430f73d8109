"""Celery tasks. They take ids (and lease tokens), never objects, and are safe to run twice.

The scheduler (``workers.scheduler``) leases due jobs and ``dispatch`` hands QUEUED ones to
``submit_jobs`` and RUNNING ones to ``poll_jobs``. Both end in ``Engine.advance``, which
re-reads the row under a fresh lease and does whatever step the job needs now, so a message
that arrives after the job moved on is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
from itertools import groupby
from typing import Any, cast

from celery import Task, shared_task

from app.db import utcnow
from app.idempotency import store as idempotency_store
from app.jobs import lyrics, previews, retention
from app.jobs.engine import Engine
from app.jobs.leasing import DueClaim
from app.jobs.outcome import Outcome
from app.jobs.status import JobStatus
from workers import ChorusCelery

log = logging.getLogger(__name__)

# Jobs due within the same slice of time travel in one message; the slice bounds the lag
# that batching adds.
BUCKET_SECONDS = 0.1
BATCH_SIZE = 50


def _engine(task: Task) -> Engine:
    # Every task runs in the app ``make_celery`` builds, which carries the process's engine.
    return cast(ChorusCelery, task.app).engine


def dispatch(claims: list[DueClaim]) -> None:
    """Send leased jobs to the workers, each slice of due times as one message with an ETA."""
    now = utcnow()

    def slot(claim: DueClaim) -> tuple[str, float]:
        return claim.status, claim.due_at.timestamp() // BUCKET_SECONDS

    for (status, _), group in groupby(sorted(claims, key=slot), key=slot):
        task = submit_jobs if status == JobStatus.QUEUED else poll_jobs
        items = list(group)
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            eta = max(c.due_at for c in batch)
            options: dict[str, Any] = {}
            if eta > now + dt.timedelta(milliseconds=20):
                options["eta"] = eta
            task.apply_async(args=([[c.job_id, c.token] for c in batch],), **options)


def _advance(task: Task, claims: list[list[str]], *, blocking: bool = False) -> list[Outcome]:
    pairs = ((job_id, token) for job_id, token in claims)
    return _engine(task).advance_many(pairs, blocking=blocking)


@shared_task(name="chorus.submit_jobs", bind=True, ignore_result=True)
def submit_jobs(self: Task, claims: list[list[str]]) -> list[Outcome]:
    """Send each leased QUEUED job (id, lease token) upstream; stale claims do nothing."""
    return _advance(self, claims)


@shared_task(name="chorus.poll_jobs", bind=True, ignore_result=True)
def poll_jobs(self: Task, claims: list[list[str]]) -> list[Outcome]:
    """Ask the upstream about each leased RUNNING job; stale claims do nothing."""
    return _advance(self, claims)


@shared_task(name="chorus.sync_submit_jobs", bind=True, ignore_result=True)
def sync_submit_jobs(self: Task, claims: list[list[str]]) -> list[Outcome]:
    """Submit to a synchronous upstream, holding the call open (the sync worker only)."""
    return _advance(self, claims, blocking=True)


@shared_task(name="chorus.purge_idempotency_keys", bind=True, ignore_result=True)
def purge_idempotency_keys(self: Task) -> int:
    """Delete idempotency keys past their expiry (24 h by default), and release the holds
    of lyrics calls whose web process died mid-call (their keys' claims lapse meanwhile)."""
    db = _engine(self).db
    purged = idempotency_store.purge_expired(db)
    if purged:
        log.info("purged %d expired idempotency key(s)", purged)
    lyrics.release_abandoned(db)
    return purged


@shared_task(name="chorus.purge_expired", bind=True, ignore_result=True)
def purge_expired(self: Task) -> int:
    """Retention (sent by the scheduler): purge terminal jobs older than RETENTION_DAYS and their audio."""
    settings = self.app.settings  # type: ignore[attr-defined]
    engine = _engine(self)
    previews.purge_previews(engine.db)
    purged = retention.purge_expired(
        engine.db,
        engine.storage,
        days=settings.retention_days,
        batch=settings.retention_batch,
    )
    if purged:
        log.info("retention: %d job(s) purged", purged)
    return int(purged)

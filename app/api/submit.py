"""A submit as both surfaces make it: the job inserted with this process's caches, committed,
then the scheduler's doorbell rung."""

from __future__ import annotations

import logging
from typing import Any

from flask import g

from app.api.webhooks import urls as webhook_urls
from app.extensions import chorus
from app.jobs import intake, reference_audio
from app.jobs.models import JobRecord

log = logging.getLogger("chorus.jobs")


def submit(args: dict[str, Any], *, surface: str = "v1") -> JobRecord:
    """``/v1`` takes a ``callback_url``; ``/v2`` (AIMLAPI's shape) has none."""
    ext = chorus()
    settings = ext.settings
    job: JobRecord = intake.create_job(
        ext.session,
        g.api_key,
        args,
        deadline_seconds=settings.job_deadline_seconds,
        surface=surface,
        check_reference=lambda url: reference_audio.check(url, settings),
        check_callback=lambda url: webhook_urls.check_param(url, settings, "callback_url"),
        offers=ext.offers,
        max_active_jobs=settings.org_max_active_jobs,
        recent_active=ext.recent_active,
        quick=ext.db.reader,
    )
    ext.commit()
    ext.doorbell.ring()  # after the commit, never inside the submit's transaction
    log.info(
        "job %s submitted (%s)",
        job.id,
        job.model_name,
        extra={"job_id": job.id, "model": job.model_name, "surface": surface, "status": "QUEUED"},
    )
    return job

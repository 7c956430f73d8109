"""The job object as the API answers it: the links start at the request's own origin.

The object itself is rendered without Flask (``app.jobs.present``); this reads what the
request knows (its scheme, host and mount point) and the app's settings.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import request

from app.extensions import chorus
from app.jobs import present, progress
from app.jobs.models import JobRecord
from app.storage import AudioStorage


def base_url() -> str:
    """What ``url_for(..., _external=True)`` puts before a route's path: scheme://host and
    the mount point (script root); werkzeug's own ``host_url`` costs more to build."""
    return f"{request.scheme}://{request.host}{request.script_root}"


def job_object(job: JobRecord, storage: AudioStorage | None = None) -> dict[str, Any]:
    """The job object, with its place in the queue (one indexed count, for a QUEUED job
    only) or its progress (the model's expected time, cached per process, for a RUNNING one)."""
    ext = chorus()
    return present.render(
        job,
        ext.settings,
        base_url(),
        storage,
        queue_position=progress.queue_position(ext.db.reader, job),
        progress=progress.for_job(job, ext.expected_seconds, dt.datetime.now(dt.UTC)),
    )


def audio_url(job: JobRecord) -> str:
    """A fresh, expiring link to Chorus's own copy of the job's audio."""
    return present.audio_url(job.id, chorus().settings.secret_key, base_url())


def job_from_token(token: str, max_age: int) -> str | None:
    return present.job_from_token(chorus().settings.secret_key, token, max_age)

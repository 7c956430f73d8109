"""``GET /v1/files/preview/{token}``: a running job's song, played while it is being made.

The answer is chunked: the pieces stored so far (``app.jobs.previews``), then each new one
as the worker stores it (looked for every ``RECHECK`` seconds), and once the job has ended
and succeeded, the rest of the song from Chorus's durable copy. The bytes a listener receives
are therefore the finished file's bytes, from the first. After the job succeeded the link
redirects to the durable audio.

A listener holds a web thread for the whole song, so each process serves at most
PREVIEW_MAX_LISTENERS of them at once; past that the answer is 503 ``preview_busy``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from flask import Response, redirect, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.api.errors import ApiError
from app.api.jobs.download import mimetype
from app.api.present import audio_url, job_from_token
from app.db import Database
from app.extensions import chorus
from app.jobs.models import Job
from app.jobs.previews import read_pieces
from app.jobs.status import ACTIVE, JobStatus
from app.storage import AudioStorage, StorageUnavailable
from app.webserver import CLIENT_GONE

log = logging.getLogger(__name__)

RECHECK = 0.5
# The key under which a2wsgi hands over the ASGI scope (where ``CLIENT_GONE`` is set).
ASGI_SCOPE = "asgi.scope"

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def listener_slots(limit: int) -> threading.BoundedSemaphore | None:
    """The process's listener slots; None when PREVIEW_MAX_LISTENERS is 0 (no previews)."""
    if limit <= 0:
        return None
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


def serve_preview(token: str) -> Response:
    ext = chorus()
    settings = ext.settings
    job_id = job_from_token(token, max_age=settings.audio_link_ttl)
    job = ext.session().get(Job, job_id) if job_id else None
    if job is None or job.purged_at is not None:
        raise ApiError(
            404,
            "This preview link is unknown or has expired; read the job again for a fresh one.",
            code="not_found",
        )
    if job.status == JobStatus.SUCCEEDED and job.audio_key:
        # The song is made: the durable copy is the preview now.
        return redirect(audio_url(job), code=307)  # type: ignore[return-value]
    if job.status not in ACTIVE:
        raise ApiError(
            404, f"Job '{job.id}' is {job.status} and has no audio.", code="preview_not_available"
        )
    slots = listener_slots(settings.preview_max_listeners)
    if slots is None or not slots.acquire(blocking=False):
        raise ApiError(
            503,
            "Too many listeners of early audio right now; try again shortly.",
            code="preview_busy",
            headers={"Retry-After": "5"},
        )
    try:
        fmt = job.preview_format
        gone = request.environ.get(ASGI_SCOPE, {}).get(CLIENT_GONE)
        body = _listen(ext.db, ext.storage, job.id, settings.audio_link_ttl, slots, gone)
        response = Response(body, 200, mimetype=mimetype(fmt or "mp3"), direct_passthrough=True)
    except BaseException:
        slots.release()
        raise
    response.headers["Cache-Control"] = "no-cache"
    # Proxies that buffer responses would hold the song back until it is complete.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _listen(
    db: Database,
    storage: AudioStorage,
    job_id: str,
    limit: float,
    slots: threading.BoundedSemaphore,
    gone: threading.Event | None,
) -> Iterator[bytes]:
    """The job's bytes in order until it ends; holds one listener slot until it stops."""
    sent, seq = 0, -1
    until = time.monotonic() + limit
    try:
        while time.monotonic() < until and not (gone is not None and gone.is_set()):
            try:
                with db.session() as session:
                    row = session.execute(
                        select(Job.status, Job.audio_key).where(Job.id == job_id)
                    ).one_or_none()
                # Read after the status: pieces deleted by an end that came since are in
                # the durable copy, read next time round from the same offset.
                pieces = read_pieces(db, job_id, seq)
            except SQLAlchemyError:
                log.warning("preview of job %s: the database failed; stopping", job_id)
                return
            for seq, data in pieces:  # noqa: B007 (seq is where the next read starts)
                yield data
                sent += len(data)
            if row is None:
                return
            status, key = row
            if status not in ACTIVE:
                if status == JobStatus.SUCCEEDED and key:
                    yield from _rest(storage, key, sent, job_id)
                return
            if not pieces:
                time.sleep(RECHECK)
    finally:
        slots.release()


def _rest(storage: AudioStorage, key: str, start: int, job_id: str) -> Iterator[bytes]:
    try:
        if start < storage.size(key):
            yield from storage.stream(key, start)
    except (FileNotFoundError, StorageUnavailable):
        log.warning("preview of job %s: the stored audio could not be read", job_id)

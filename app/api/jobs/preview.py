"""``GET /v1/files/preview/{token}``: a running job's song, played while it is being made.

The answer is chunked: the pieces stored so far (``app.jobs.previews``), then each new one
as the worker stores it, and once the job has ended and succeeded, the rest of the song from
Chorus's durable copy. The bytes a listener receives are therefore the finished file's bytes,
from the first. After the job succeeded the link redirects to the durable audio.

This view answers only the head: it checks the link and the job, and sends the pieces stored
so far with a private header saying where they end (``app.listeners.PREVIEW``). The web
process's event loop follows from there (``app.listeners``), so a listener holds no thread;
each process serves at most PREVIEW_MAX_LISTENERS of them at once, and past that the answer
is 503 ``preview_busy``. The check counts the listeners already followed: openings that pass
it at the same instant may go past the cap by at most the threads running them.

Served without the event loop (plain WSGI: a test client), the answer is that head alone, a
correct beginning of the song that ends there; the link plays the whole song once the job
has ended (307).
"""

from __future__ import annotations

from flask import Response, redirect

from app.api.errors import ApiError
from app.api.jobs.download import mimetype
from app.api.present import audio_url, job_from_token
from app.extensions import chorus
from app.jobs.models import Job
from app.jobs.previews import read_pieces
from app.jobs.status import ACTIVE, JobStatus
from app.listeners import PREVIEW, preview_header


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
    if ext.previews.listeners >= settings.preview_max_listeners:
        raise ApiError(
            503,
            "Too many listeners of early audio right now; try again shortly.",
            code="preview_busy",
            headers={"Retry-After": "5"},
        )
    # Read after the status: pieces deleted by an end that came since are in the durable
    # copy, which the follower sends from the byte this head ends at.
    pieces = read_pieces(ext.db, job.id, -1)
    head = b"".join(data for _, data in pieces)
    after = pieces[-1][0] if pieces else -1
    response = Response(head, 200, mimetype=mimetype(job.preview_format or "mp3"))
    response.headers[PREVIEW.decode()] = preview_header(job.id, after, len(head))
    response.headers["Cache-Control"] = "no-cache"
    # Proxies that buffer responses would hold the song back until it is complete.
    response.headers["X-Accel-Buffering"] = "no"
    return response

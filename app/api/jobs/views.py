"""``/v1/music/generations``: submit and read jobs (CONTRACT §1a)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request
from flask.views import MethodView
from marshmallow import RAISE

from app.api import openapi
from app.api.auth import read_job, require_key
from app.api.errors import ApiError
from app.api.idempotency import idempotent
from app.api.jobs import examples
from app.api.jobs.download import send_audio
from app.api.jobs.preview import serve_preview
from app.api.jobs.schemas import (
    CreateGenerationSchema,
    JobListSchema,
    JobSchema,
    ListGenerationsQuerySchema,
)
from app.api.present import job_from_token, job_object
from app.api.schemas import OpenAIErrorSchema
from app.api.submit import submit
from app.extensions import chorus
from app.jobs import queries
from app.jobs.cancel import cancel_job
from app.jobs.models import Job, JobRecord
from app.jobs.status import ACTIVE, JobStatus
from app.jobs.waiting import requested_wait
from app.storage import StorageUnavailable

log = logging.getLogger(__name__)

blp = openapi.ApiBlueprint(
    "generations",
    __name__,
    url_prefix="/v1/music/generations",
    description="Music generation jobs, OpenAI-style.",
    bearer=True,
    rate_limited=True,
)
files = openapi.ApiBlueprint(
    "files", __name__, url_prefix="/v1/files", description="Chorus's own copies of generated audio."
)

JOB_ID = {
    "in": "path",
    "name": "job_id",
    "description": "The job's id, as the submit returned it.",
    "example": "luid_01m7z6rkxcmx0h7hnjr0bxppzc",
}
AUDIO_TOKEN = {
    "in": "path",
    "name": "token",
    "description": "The signed token of a job's `audio` link.",
    "example": "Imx1aWRfMDFtN3o2cmt4Y214MGg3aG5qcjBieHBwemMi.Z0J9ww.Xr8b5kLq0sWm4g3nQ0v3Yb1c2dE",
}


blp.before_request(require_key)


@blp.route("")
class Generations(MethodView):
    # webargs would drop unknown query parameters; a misspelt one should say so instead.
    @blp.arguments(ListGenerationsQuerySchema(), location="query", unknown=RAISE)
    @blp.response(
        200,
        JobListSchema,
        description="A page of the org's jobs, newest first.",
        example=examples.JOB_LIST,
    )
    def get(self, args: dict[str, Any]) -> Response:
        """List the org's jobs, newest first, a page at a time.

        Pass the page's `last_id` as `after` for the next one while `has_more` is true.
        """
        ext = chorus()
        page = queries.list_jobs(
            ext.session(),
            g.api_key,
            limit=args["limit"],
            after=args["after"],
            status=args["status"],
        )
        data = [job_object(job, ext.storage) for job in page.jobs]
        return jsonify(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page.has_more,
            }
        )

    @idempotent
    # Schema instances, here and on every route: given a class, webargs builds a new schema
    # (deep-copying its fields) on every request.
    @blp.arguments(CreateGenerationSchema(), examples=examples.CREATE_REQUESTS)
    @blp.response(
        202,
        JobSchema,
        description="Accepted: the job, `QUEUED`; `Location` is its URL.",
        example=examples.JOB_QUEUED,
        headers={
            "Location": {
                "description": "The job's URL, to poll.",
                "schema": {"type": "string", "format": "uri"},
                "required": True,
            }
        },
    )
    @blp.alt_response(
        201,
        schema=JobSchema,
        description="With `Prefer: wait`: the job ended within the wait.",
        example=examples.JOB_SUCCEEDED,
    )
    @blp.alt_response(
        400,
        schema=OpenAIErrorSchema,
        description="Missing or invalid input, or no such published model in that category; "
        "`param` names the field.",
        examples=examples.SUBMIT_400,
    )
    @blp.alt_response(
        409,
        schema=OpenAIErrorSchema,
        description="This Idempotency-Key's first request is still being handled.",
        example=examples.IDEMPOTENCY_409,
    )
    @blp.alt_response(
        422,
        schema=OpenAIErrorSchema,
        description="This Idempotency-Key was used with another body.",
        example=examples.IDEMPOTENCY_422,
    )
    @blp.alt_response(
        429,
        schema=OpenAIErrorSchema,
        description="Balance too low (`insufficient_quota`), too many jobs in progress "
        "(`too_many_active_jobs`) or too many requests (`rate_limit_exceeded`).",
        examples=examples.SUBMIT_429,
        headers={"Retry-After": openapi.RETRY_AFTER},
    )
    def post(self, args: dict[str, Any]) -> Response:
        """Submit a music generation. Answers at once; the job runs in the background.

        `Prefer: wait=N` (N ≤ 60; `wait` alone is 60) holds the answer until the job ends or N
        seconds pass. `Idempotency-Key` makes a retry get the first request's answer.
        `Cancel-After` (`30s`, `5m`, `1h30m`, or seconds; the body's `cancel_after` wins) sets
        the client's deadline: a job still active then ends FAILED `cancel_after_elapsed`,
        uncharged.
        """
        ext = chorus()
        # Every header is read before anything is written: a request that fails after its job
        # was stored would make the client's retry a second job.
        wait = requested_wait(request.headers)
        job, response = submit(args, lambda stored: _accepted(stored, 202))
        if not wait:
            return response
        hub = ext.waiters
        applied = None
        with hub.slot() as granted:
            # Over the process's cap the request answers at once, as without the header.
            if granted:
                hub.wait(job.id, wait)
                applied = wait
        if not applied:
            return response
        # The submit gave its connection back (at its commit): waiting holds none.
        job = ext.session().get(Job, job.id, populate_existing=True) or job
        return _accepted(job, 201 if JobStatus(job.status).terminal else 202, applied)


def _accepted(job: JobRecord, status: int, applied: int | None = None) -> Response:
    body = job_object(job, chorus().storage)
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = body["urls"]["get"]
    if applied:
        response.headers["Preference-Applied"] = f"wait={applied}"
    return response


@blp.route("/<job_id>", parameters=[JOB_ID])
class Generation(MethodView):
    @blp.response(200, JobSchema, description="The job.", examples=examples.JOBS)
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No such job for this key's org.",
        example=examples.JOB_NOT_FOUND,
    )
    def get(self, job_id: str) -> Response:
        """Read a job. Another tenant's job answers 404, like one that never existed."""
        return jsonify(job_object(read_job(job_id), chorus().storage))


@blp.route("/<job_id>/cancel", parameters=[JOB_ID])
class Cancel(MethodView):
    @idempotent
    @blp.response(
        200,
        JobSchema,
        description="The job, `CANCELLED`, its hold released.",
        example=examples.JOB_CANCELLED,
    )
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No such job for this key's org.",
        example=examples.JOB_NOT_FOUND,
    )
    @blp.alt_response(
        409,
        schema=OpenAIErrorSchema,
        description="The job already ended (`job_not_cancellable`), or this Idempotency-Key's "
        "first request is still being handled.",
        example=examples.NOT_CANCELLABLE,
    )
    @blp.alt_response(
        422,
        schema=OpenAIErrorSchema,
        description="This Idempotency-Key was used for another request.",
        example=examples.IDEMPOTENCY_422,
    )
    def post(self, job_id: str) -> Response:
        """Cancel a QUEUED or RUNNING job. The held price is released; the job never charges.

        An upstream that may already be making the song is told where its protocol allows.
        """
        ext = chorus()
        job = cancel_job(ext.transitions, ext.session(), g.api_key, job_id)
        return jsonify(job_object(job, ext.storage))


@blp.route("/<job_id>/content", parameters=[JOB_ID])
@blp.response(
    200,
    {"type": "string", "format": "binary"},
    description="The audio file; 206 with the byte range a `Range` header asked for.",
    content_type="audio/*",
)
@blp.alt_response(
    206,
    schema={"type": "string", "format": "binary"},
    description="The byte range asked for with a `Range` header.",
    content_type="audio/*",
    success=True,
)
@blp.alt_response(
    404,
    schema=OpenAIErrorSchema,
    description="No such job for this key's org, or its file is missing from storage.",
    example=examples.JOB_NOT_FOUND,
)
@blp.alt_response(
    409,
    schema=OpenAIErrorSchema,
    description="The job has no audio (yet): `audio_not_ready`.",
    example=examples.AUDIO_NOT_READY,
)
@blp.alt_response(
    410,
    schema=OpenAIErrorSchema,
    description="Retention removed the audio: `audio_purged`.",
    example=examples.AUDIO_PURGED,
)
def content(job_id: str) -> Response:
    """Download a job's audio with the API key (no link needed). Supports HTTP Range."""
    ext = chorus()
    job = read_job(job_id)
    if job.purged_at is not None:
        raise ApiError(
            410,
            f"The audio of job '{job_id}' was removed under the retention policy.",
            code="audio_purged",
        )
    if job.status != JobStatus.SUCCEEDED or not job.audio_key:
        raise ApiError(
            409,
            f"Job '{job_id}' is {job.status} and has no audio"
            + (" yet; poll the job until it is SUCCEEDED." if job.status in ACTIVE else "."),
            code="audio_not_ready",
        )
    try:
        return send_audio(ext.storage, job.audio_key, job.audio_format)
    except FileNotFoundError:
        raise ApiError(
            404, f"The audio of job '{job_id}' is missing from storage.", code="audio_missing"
        ) from None
    except StorageUnavailable as exc:
        raise _unavailable(exc) from exc


@files.route("/audio/<token>", parameters=[AUDIO_TOKEN])
@files.response(
    200,
    {"type": "string", "format": "binary"},
    description="The audio file (WAV, MP3 or FLAC, as the upstream made it). Takes no key: "
    "the signed link is the credential.",
    content_type="audio/*",
)
@files.alt_response(
    404,
    schema=OpenAIErrorSchema,
    description="Unknown or expired link.",
    example=examples.AUDIO_NOT_FOUND,
)
def audio(token: str) -> Response:
    """Download a finished job's audio through the signed link in its `audio` field."""
    ext = chorus()
    job_id = job_from_token(token, max_age=ext.settings.audio_link_ttl)
    job = ext.session().get(Job, job_id) if job_id else None
    gone = ApiError(
        404,
        "This audio link is unknown or has expired; read the job again for a fresh one.",
        code="not_found",
    )
    if job is None or not job.audio_key or job.purged_at is not None:
        raise gone
    try:
        return send_audio(ext.storage, job.audio_key, job.audio_format)
    except FileNotFoundError:
        raise gone from None
    except StorageUnavailable as exc:
        raise _unavailable(exc) from exc


@files.route("/preview/<token>", parameters=[AUDIO_TOKEN])
@files.response(
    200,
    {"type": "string", "format": "binary"},
    description="A running job's song as it is being made, chunked: the audio so far, then "
    "each new piece as it arrives, then the rest once the job succeeded. Takes no key.",
    content_type="audio/*",
)
@files.alt_response(307, description="The job succeeded: to its durable audio link.")
@files.alt_response(
    404,
    schema=OpenAIErrorSchema,
    description="Unknown or expired link, or a job that ended without audio.",
    example=examples.AUDIO_NOT_FOUND,
)
@files.alt_response(
    503,
    schema=OpenAIErrorSchema,
    description="Too many preview listeners on this server: `preview_busy` (Retry-After).",
    examples={
        "busy": openapi.example(
            "Too many listeners",
            503,
            "Too many listeners of early audio right now; try again shortly.",
            code="preview_busy",
        )
    },
    headers={"Retry-After": openapi.RETRY_AFTER},
)
def preview(token: str) -> Response:
    """Listen to a streamed job's song while it is being made (its `audio_preview` link)."""
    return serve_preview(token)


def _unavailable(exc: StorageUnavailable) -> ApiError:
    log.warning("audio store unavailable: %s", exc)
    return ApiError(
        503,
        "The audio store is unavailable right now; try again shortly.",
        code="storage_unavailable",
        headers={"Retry-After": "5"},
    )

"""``/v1/music/generations``: submit and read jobs (CONTRACT §1a)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, send_file
from flask.views import MethodView

from app import reference_audio
from app.api import openapi
from app.api.auth import require_key
from app.api.errors import ApiError
from app.extensions import chorus
from app.jobs import examples, service
from app.jobs.models import Job
from app.jobs.present import job_from_token, job_object
from app.jobs.schemas import CreateGenerationSchema, JobSchema, OpenAIErrorSchema

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
    @blp.arguments(CreateGenerationSchema, examples=examples.CREATE_REQUESTS)
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
        400,
        schema=OpenAIErrorSchema,
        description="Missing or invalid input, or no such published model in that category; "
        "`param` names the field.",
        examples=examples.SUBMIT_400,
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
        """Submit a music generation. Answers at once; the job runs in the background."""
        ext = chorus()
        session = ext.session()
        job = service.create_job(
            session,
            g.api_key,
            args,
            deadline_seconds=ext.settings.job_deadline_seconds,
            check_reference=lambda url: reference_audio.check(url, ext.settings),
            offers=ext.offers,
            max_active_jobs=ext.settings.org_max_active_jobs,
        )
        session.commit()
        response = jsonify(job_object(job))
        response.status_code = 202
        response.headers["Location"] = response.json["urls"]["get"]  # type: ignore[index]
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
        ext = chorus()
        job = service.get_job(ext.session(), g.api_key, job_id)
        return jsonify(job_object(job, ext.storage))


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
    """Download a finished job's audio through the signed link in its ``audio`` field."""
    ext = chorus()
    job_id = job_from_token(token, max_age=ext.settings.audio_link_ttl)
    job = ext.session().get(Job, job_id) if job_id else None
    if job is None or not job.audio_key or not ext.storage.exists(job.audio_key):
        raise ApiError(
            404,
            "This audio link is unknown or has expired; read the job again for a fresh one.",
            code="not_found",
        )
    return send_file(
        ext.storage.path(job.audio_key),
        mimetype=_mimetype(job.audio_format),
        download_name=job.audio_key,
        conditional=True,
        max_age=0,
    )


def _mimetype(fmt: str | None) -> str:
    return {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}.get(
        fmt or "", "application/octet-stream"
    )

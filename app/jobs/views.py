"""``/v1/music/generations``: submit and read jobs (CONTRACT §1a)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, send_file
from flask.views import MethodView
from flask_smorest import Blueprint

from app import reference_audio
from app.api.auth import require_key
from app.api.errors import ApiError
from app.extensions import chorus
from app.jobs import service
from app.jobs.models import Job
from app.jobs.present import job_from_token, job_object
from app.jobs.schemas import CreateGenerationSchema, JobSchema, OpenAIErrorSchema
from app.webhooks import urls as webhook_urls

blp = Blueprint(
    "generations",
    __name__,
    url_prefix="/v1/music/generations",
    description="Music generation jobs, OpenAI-style.",
)
files = Blueprint(
    "files", __name__, url_prefix="/v1/files", description="Chorus's own copies of generated audio."
)


blp.before_request(require_key)


@blp.route("")
class Generations(MethodView):
    @blp.arguments(CreateGenerationSchema)
    @blp.response(202, JobSchema, description="Accepted: the job, QUEUED.")
    @blp.alt_response(400, schema=OpenAIErrorSchema, description="Missing or invalid input.")
    @blp.alt_response(403, schema=OpenAIErrorSchema, description="Missing or unknown API key.")
    @blp.alt_response(
        429, schema=OpenAIErrorSchema, description="Balance too low (insufficient_quota)."
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
            check_callback=lambda url: webhook_urls.check_param(url, ext.settings, "callback_url"),
            offers=ext.offers,
            max_active_jobs=ext.settings.org_max_active_jobs,
        )
        session.commit()
        response = jsonify(job_object(job))
        response.status_code = 202
        response.headers["Location"] = response.json["urls"]["get"]  # type: ignore[index]
        return response


@blp.route("/<job_id>")
class Generation(MethodView):
    @blp.response(200, JobSchema)
    @blp.alt_response(403, schema=OpenAIErrorSchema, description="Missing or unknown API key.")
    @blp.alt_response(404, schema=OpenAIErrorSchema, description="No such job for this key's org.")
    def get(self, job_id: str) -> Response:
        """Read a job. Another tenant's job answers 404, like one that never existed."""
        ext = chorus()
        job = service.get_job(ext.session(), g.api_key, job_id)
        return jsonify(job_object(job, ext.storage))


@files.route("/audio/<token>")
@files.response(200, description="The audio file.", content_type="audio/wav")
@files.alt_response(404, schema=OpenAIErrorSchema, description="Unknown or expired link.")
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

"""``/v2/generate/audio``: AIMLAPI's submit-then-poll protocol, served by Chorus (CONTRACT §1b).

Code written for AIMLAPI runs against Chorus by changing only the base URL and key. The jobs
are the same rows as ``/v1``'s (surface ``v2``), in the catalog's default music category,
and can be read on either surface; only the words differ.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from app import reference_audio
from app.api.auth import require_key
from app.extensions import chorus
from app.idempotency.hook import idempotent
from app.jobs import service
from app.jobs.models import Job
from app.jobs.present import audio_url
from app.jobs.status import JobStatus
from app.v2.schemas import (
    AimlapiErrorSchema,
    GenerationQuerySchema,
    GenerationSchema,
    SubmitSchema,
    SubmittedSchema,
)

blp = Blueprint(
    "v2",
    __name__,
    url_prefix="/v2/generate/audio",
    description="Music generation, AIMLAPI-compatible: submit, then poll by generation_id.",
)
blp.before_request(require_key)

# AIMLAPI's status words for Chorus's job states.
STATUS_WORDS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "generating",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "error",
    JobStatus.CANCELLED: "error",
}


@blp.route("")
class Generations(MethodView):
    @idempotent
    @blp.arguments(SubmitSchema)
    @blp.response(201, SubmittedSchema, description="Accepted: the generation id, queued.")
    @blp.alt_response(400, schema=AimlapiErrorSchema, description="Missing or invalid input.")
    @blp.alt_response(401, schema=AimlapiErrorSchema, description="Missing or unknown API key.")
    @blp.alt_response(403, schema=AimlapiErrorSchema, description="Out of credits.")
    @blp.alt_response(429, schema=AimlapiErrorSchema, description="Too many requests.")
    def post(self, args: dict[str, Any]) -> Response:
        """Submit a music generation; poll ``GET ?generation_id=`` for the result."""
        ext = chorus()
        session = ext.session()
        job = service.create_job(
            session,
            g.api_key,
            {**args, "catelogid": ext.settings.default_music_category},
            deadline_seconds=ext.settings.job_deadline_seconds,
            surface="v2",
            check_reference=lambda url: reference_audio.check(url, ext.settings),
            offers=ext.offers,
            max_active_jobs=ext.settings.org_max_active_jobs,
            recent_active=ext.recent_active,
        )
        session.commit()
        # 201, as AIMLAPI answers a created generation.
        response = jsonify(id=job.id, status="queued")
        response.status_code = 201
        return response

    @blp.arguments(GenerationQuerySchema, location="query")
    @blp.response(200, GenerationSchema)
    @blp.alt_response(401, schema=AimlapiErrorSchema, description="Missing or unknown API key.")
    @blp.alt_response(404, schema=AimlapiErrorSchema, description="No such generation.")
    def get(self, args: dict[str, Any]) -> Response:
        """Read a generation. Another tenant's id answers 404, like one that never existed."""
        job = service.get_job(chorus().session(), g.api_key, args["generation_id"])
        return jsonify(generation_object(job))


def generation_object(job: Job) -> dict[str, Any]:
    status = JobStatus(job.status)
    audio_file = None
    if status is JobStatus.SUCCEEDED and job.audio_key is not None:
        audio_file = {"url": audio_url(job)}
    error = None
    if status is JobStatus.FAILED:
        error = {
            "name": job.error_code or "error",
            "message": job.error_message or "The generation failed.",
        }
    elif status is JobStatus.CANCELLED:
        error = {
            "name": "cancelled",
            "message": job.error_message or "The generation was cancelled.",
        }
    return {"id": job.id, "status": STATUS_WORDS[status], "audio_file": audio_file, "error": error}

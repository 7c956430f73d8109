"""``/v2/generate/audio``: AIMLAPI's submit-then-poll protocol, served by Chorus (CONTRACT §1b).

Code written for AIMLAPI runs against Chorus by changing only the base URL and key. The jobs
are the same rows as ``/v1``'s (surface ``v2``), in the catalog's default music category,
and can be read on either surface; only the words differ.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask.views import MethodView

from app.api import openapi
from app.api.auth import read_job, require_key
from app.api.idempotency import idempotent
from app.api.present import audio_url
from app.api.submit import submit
from app.api.v2 import examples
from app.api.v2.schemas import (
    AimlapiErrorSchema,
    GenerationQuerySchema,
    GenerationSchema,
    SubmitSchema,
    SubmittedSchema,
)
from app.extensions import chorus
from app.jobs.models import JobRecord
from app.jobs.status import JobStatus

# Not bearer=/rate_limited=: those shared responses have OpenAI's shape, and /v2 answers
# in AIMLAPI's (401 for a key, its own error body); each operation documents its own.
blp = openapi.ApiBlueprint(
    "v2",
    __name__,
    url_prefix="/v2/generate/audio",
    description="Music generation, AIMLAPI-compatible: submit, then poll by generation_id.",
)
SECURITY: list[dict[str, list[str]]] = [{openapi.BEARER: []}]


def _error(status: int, description: str, example: dict[str, Any], **kwargs: Any) -> Any:
    return blp.alt_response(
        status, schema=AimlapiErrorSchema, description=description, example=example, **kwargs
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
    @blp.doc(security=SECURITY)
    @blp.arguments(SubmitSchema(), examples=examples.SUBMIT_REQUESTS)
    @blp.response(
        201,
        SubmittedSchema,
        description="Accepted: the generation id, queued.",
        example=examples.SUBMITTED,
    )
    @_error(400, "Missing or invalid input; the message names the field.", examples.BAD_INPUT)
    @_error(401, "No key, or an unknown or revoked one.", examples.INVALID_KEY)
    @_error(403, "Out of credits: the balance is too low for the model.", examples.OUT_OF_CREDITS)
    @_error(409, "This Idempotency-Key's first request is in progress.", examples.IDEMPOTENCY_BUSY)
    @_error(413, "The body is over MAX_CONTENT_LENGTH.", examples.TOO_LARGE)
    @_error(422, "This Idempotency-Key was used for another request.", examples.IDEMPOTENCY_REUSED)
    @_error(
        429,
        "Too many requests, or too many jobs in progress.",
        examples.THROTTLED,
        headers={"Retry-After": openapi.RETRY_AFTER},
    )
    def post(self, args: dict[str, Any]) -> Response:
        """Submit a music generation; poll `GET ?generation_id=` for the result.

        `Cancel-After` (`30s`, `5m`, `1h30m`, or seconds) sets the client's deadline, as on
        `/v1`."""
        catalog = chorus().settings.default_music_category
        _job, response = submit({**args, "catelogid": catalog}, _created, surface="v2")
        return response

    @blp.doc(security=SECURITY)
    @blp.arguments(GenerationQuerySchema(), location="query")
    @blp.response(
        200, GenerationSchema, description="The generation as it is.", examples=examples.GENERATIONS
    )
    @_error(400, "No generation_id.", examples.BAD_QUERY)
    @_error(401, "No key, or an unknown or revoked one.", examples.INVALID_KEY)
    @_error(404, "No such generation (another tenant's id included).", examples.NOT_FOUND)
    @_error(
        429,
        "Too many requests.",
        examples.THROTTLED,
        headers={"Retry-After": openapi.RETRY_AFTER},
    )
    def get(self, args: dict[str, Any]) -> Response:
        """Read a generation. Another tenant's id answers 404, like one that never existed."""
        return jsonify(generation_object(read_job(args["generation_id"])))


def _created(job: JobRecord) -> Response:
    # 201, as AIMLAPI answers a created generation.
    response = jsonify(id=job.id, status="queued")
    response.status_code = 201
    return response


def generation_object(job: JobRecord) -> dict[str, Any]:
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

"""Examples for the OpenAPI document of ``/v1/music/generations`` (bodies as Chorus sends them)."""

from __future__ import annotations

from typing import Any

from app.api.openapi import (
    INVALID_VALUE_EXAMPLE,
    MISSING_FIELD_EXAMPLE,
    RATE_LIMIT_EXAMPLE,
    UNKNOWN_FIELD_EXAMPLE,
    example,
)

_LYRICS = "[Verse]\nWalking down the street\nFeeling the beat\n[Chorus]\nDancing in the sun"

CREATE_REQUESTS: dict[str, Any] = {
    "minimal": {
        "summary": "The four required fields",
        "value": {
            "model": "music-2.6",
            "catelogid": "music_gen",
            "prompt": "Pop music, happy, suitable for a sunny day",
            "lyrics": _LYRICS,
        },
    },
    "options": {
        "summary": "With audio settings and metadata",
        "value": {
            "model": "music-2.6",
            "catelogid": "music_gen",
            "prompt": "Indie folk, melancholic, a rainy evening",
            "lyrics": _LYRICS,
            "output_format": "url",
            "audio_setting": {"sample_rate": 44100, "bitrate": 256000, "format": "mp3"},
            "metadata": {"customer_ref": "order-1234"},
        },
    },
}

_ID = "luid_01m7z6rkxcmx0h7hnjr0bxppzc"
_BASE = "http://127.0.0.1:8000"


def _job(status: str, **changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": _ID,
        "object": "music.generation",
        "model": "music-2.6",
        "catelogid": "music_gen",
        "status": status,
        "created": 1795269873,
        "started_at": None,
        "finished_at": None,
        "queue_position": None,
        "progress": None,
        "eta": None,
        "cancel_after": None,
        "audio": None,
        "audio_info": None,
        "error": None,
        "metadata": {"customer_ref": "order-1234"},
        "cost": {"amount": 100, "currency": "CNY", "state": "held"},
        "upstream": {"provider": None, "account": None, "attempts": 0},
        "purged_at": None,
        "urls": {
            "get": f"{_BASE}/v1/music/generations/{_ID}",
            "audio": None,
            "content": f"{_BASE}/v1/music/generations/{_ID}/content",
        },
    }
    job.update(changes)
    return job


_AUDIO = f"{_BASE}/v1/files/audio/Imx1aWRfMDFtN3o2cmt4Y214MGg3aG5qcjBieHBwemMi.Z0J9ww.Xr8b5k"

JOB_QUEUED = _job("QUEUED", queue_position=0)
JOBS: dict[str, Any] = {
    "queued": {"summary": "Accepted, not yet upstream", "value": JOB_QUEUED},
    "running": {
        "summary": "The upstream has it",
        "value": _job(
            "RUNNING",
            started_at=1795269875,
            progress=0.4,
            eta=1795269935,
            upstream={"provider": "aimlapi", "account": "sim-aimlapi", "attempts": 1},
        ),
    },
    "succeeded": {
        "summary": "Finished: `audio` links to Chorus's copy",
        "value": _job(
            "SUCCEEDED",
            started_at=1795269875,
            finished_at=1795269878,
            progress=1.0,
            audio=_AUDIO,
            audio_info={
                "format": "wav",
                "sample_rate": 32000,
                "bitrate": 512000,
                "channels": 1,
                "duration_ms": 10000,
                "size": 640044,
            },
            cost={"amount": 100, "currency": "CNY", "state": "captured"},
            upstream={"provider": "aimlapi", "account": "sim-aimlapi", "attempts": 1},
            urls={
                "get": f"{_BASE}/v1/music/generations/{_ID}",
                "audio": _AUDIO,
                "content": f"{_BASE}/v1/music/generations/{_ID}/content",
            },
        ),
    },
    "failed": {
        "summary": "Failed: `error` says why, and the hold is released",
        "value": _job(
            "FAILED",
            started_at=1795269875,
            finished_at=1795269890,
            error={"code": "content_moderated", "message": "The upstream refused the content."},
            cost={"amount": 100, "currency": "CNY", "state": "released"},
            upstream={"provider": "aimlapi", "account": "sim-aimlapi", "attempts": 1},
        ),
    },
}

SUBMIT_400: dict[str, Any] = {
    "missing_required_parameter": MISSING_FIELD_EXAMPLE,
    "invalid_value": INVALID_VALUE_EXAMPLE,
    "unknown_parameter": UNKNOWN_FIELD_EXAMPLE,
    "invalid_request": example(
        "A Cancel-After header or cancel_after field that is not a duration, or out of bounds",
        400,
        "Invalid Cancel-After: 'soon' is not a duration like 30s, 5m or 1h30m (at least 5 "
        "seconds, at most the job's own deadline).",
        param="Cancel-After",
        code="invalid_request",
    ),
    "model_not_found": example(
        "No published model of that name in that category",
        400,
        "The model 'music-9' does not exist or is not published in catalog 'music_gen'.",
        param="model",
        code="model_not_found",
    ),
}

SUBMIT_429: dict[str, Any] = {
    "insufficient_quota": example(
        "The balance is too low for the model",
        429,
        "You exceeded your current quota: the balance is too low for this model. Top up "
        "and try again.",
        code="insufficient_quota",
    ),
    "too_many_active_jobs": example(
        "ORG_MAX_ACTIVE_JOBS jobs already queued or running",
        429,
        "Too many jobs in progress: at most 1000 may be queued or running at once. Wait for "
        "some to finish.",
        code="too_many_active_jobs",
    ),
    "rate_limit_exceeded": RATE_LIMIT_EXAMPLE,
}

JOB_NOT_FOUND = example(
    "Unknown, or another org's",
    404,
    f"No music generation found with id '{_ID}'.",
    param="id",
    code="not_found",
)["value"]

AUDIO_NOT_FOUND = example(
    "Unknown or expired link",
    404,
    "This audio link is unknown or has expired; read the job again for a fresh one.",
    code="not_found",
)["value"]

JOB_SUCCEEDED = JOBS["succeeded"]["value"]
JOB_CANCELLED = _job(
    "CANCELLED",
    finished_at=1795269880,
    cost={"amount": 100, "currency": "CNY", "state": "released"},
)
JOB_LIST: dict[str, Any] = {
    "object": "list",
    "data": [JOB_QUEUED],
    "first_id": _ID,
    "last_id": _ID,
    "has_more": False,
}

IDEMPOTENCY_409 = example(
    "The first request with this key is still being handled",
    409,
    "A request with this Idempotency-Key is still being handled. Retry once it has answered: "
    "the retry gets the same answer.",
    param="Idempotency-Key",
    code="idempotency_key_in_use",
)["value"]
IDEMPOTENCY_422 = example(
    "The key was used with another body",
    422,
    "This Idempotency-Key was already used for a different request (another body or route). "
    "Use a new key for a new request.",
    param="Idempotency-Key",
    code="idempotency_key_reused",
)["value"]
NOT_CANCELLABLE = example(
    "The job already ended",
    409,
    f"Music generation '{_ID}' has already ended (SUCCEEDED) and cannot be cancelled.",
    param="id",
    code="job_not_cancellable",
)["value"]
AUDIO_NOT_READY = example(
    "No audio (yet)",
    409,
    f"Job '{_ID}' is RUNNING and has no audio yet; poll the job until it is SUCCEEDED.",
    code="audio_not_ready",
)["value"]
AUDIO_PURGED = example(
    "Retention removed the audio",
    410,
    f"The audio of job '{_ID}' was removed under the retention policy.",
    code="audio_purged",
)["value"]

"""Examples for the OpenAPI document of ``/v2/generate/audio`` (bodies as Chorus sends them)."""

from __future__ import annotations

from typing import Any

_ID = "luid_01m7z6rkxcmx0h7hnjr0bxppzc"
_PATH = "/v2/generate/audio"


def error(status: int, message: str) -> dict[str, Any]:
    """An AIMLAPI-style error body."""
    return {
        "message": message,
        "path": _PATH,
        "requestId": "7d0c4f2e-5b1a-4c8e-9f3d-2a6b8e1c0d4f",
        "statusCode": status,
        "timestamp": "2026-11-21T12:00:00.000Z",
    }


SUBMIT_REQUESTS: dict[str, Any] = {
    "lyrics": {
        "summary": "A song from a prompt and lyrics",
        "value": {
            "model": "minimax/music-1.5",
            "prompt": "Indie folk, melancholic, a rainy evening",
            "lyrics": "[Verse]\nStreetlights flicker, the night breeze sighs\n[Chorus]\nStay a while",
        },
    },
    "reference": {
        "summary": "A song after a reference track",
        "value": {
            "model": "minimax-music",
            "prompt": "##Side by side, through thick and thin##",
            "reference_audio_url": "https://example.com/reference.mp3",
        },
    },
}
SUBMITTED = {"id": _ID, "status": "queued"}
GENERATIONS: dict[str, Any] = {
    "queued": {
        "summary": "Accepted, not yet upstream",
        "value": {"id": _ID, "status": "queued", "audio_file": None, "error": None},
    },
    "completed": {
        "summary": "Done: the track's link",
        "value": {
            "id": _ID,
            "status": "completed",
            "audio_file": {"url": "http://127.0.0.1:8000/v1/files/audio/Imx1aWRf.Z0J9ww.Xr8b5k"},
            "error": None,
        },
    },
    "error": {
        "summary": "Failed",
        "value": {
            "id": _ID,
            "status": "error",
            "audio_file": None,
            "error": {"name": "content_moderated", "message": "The upstream refused the content."},
        },
    },
}
BAD_INPUT = error(400, "Body validation error! Missing required parameter: prompt")
BAD_QUERY = error(400, "Query validation error! Missing required parameter: generation_id")
INVALID_KEY = error(401, "Invalid or missing API key. Send 'Authorization: Bearer <key>'.")
OUT_OF_CREDITS = error(
    403, "You've run out of credits: the balance is too low for this model. Top up and try again."
)
NOT_FOUND = error(404, f"No music generation found with id '{_ID}'.")
IDEMPOTENCY_BUSY = error(409, "A request with this Idempotency-Key is still being handled.")
TOO_LARGE = error(413, "The data value transmitted exceeds the capacity limit.")
IDEMPOTENCY_REUSED = error(422, "This Idempotency-Key was already used for a different request.")
THROTTLED = error(429, "Rate limit reached: 600 per 1 minute. Slow down and retry later.")

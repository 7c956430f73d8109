"""Examples for the OpenAPI document of the webhook routes (bodies as Chorus sends them)."""

from __future__ import annotations

from typing import Any

from app.api.openapi import example

_JOB = "luid_01m7z6rkxcmx0h7hnjr0bxppzc"
_DELIVERY = "msg_01m7z6s3k9q2w8e4r5t6y7v8x9"
_URL = "https://hooks.example.com/chorus"
_EVENTS = [
    "music.generation.running",
    "music.generation.succeeded",
    "music.generation.failed",
    "music.generation.cancelled",
]

# ------------------------------------------------------------------ the default endpoint

ENDPOINT_REQUESTS: dict[str, Any] = {
    "all_events": {
        "summary": "Every event type",
        "value": {"url": _URL},
    },
    "some_events": {
        "summary": "Only the events that end a job",
        "value": {
            "url": _URL,
            "events": [
                "music.generation.succeeded",
                "music.generation.failed",
                "music.generation.cancelled",
            ],
        },
    },
}

ENDPOINT = {
    "object": "webhook.endpoint",
    "url": _URL,
    "events": _EVENTS,
    "status": "enabled",
    "disabled_reason": None,
    "created": 1795269000,
    "updated": 1795269000,
}
ENDPOINTS: dict[str, Any] = {
    "enabled": {"summary": "Receiving events", "value": ENDPOINT},
    "disabled": {
        "summary": "Disabled after the target answered 410 Gone; a PUT enables it again",
        "value": {
            **ENDPOINT,
            "status": "disabled",
            "disabled_reason": f"answered 410 Gone to delivery {_DELIVERY}",
            "updated": 1795269880,
        },
    },
}

NO_ENDPOINT = example(
    "No default endpoint set",
    404,
    "This org has no default webhook endpoint.",
    code="not_found",
)["value"]

ENDPOINT_400: dict[str, Any] = {
    "missing_required_parameter": example(
        "No url",
        400,
        "Missing required parameter: url",
        param="url",
        code="missing_required_parameter",
    ),
    "invalid_value": example(
        "An unknown event type",
        400,
        "Invalid value for 'events.0': Must be one of: music.generation.running, "
        "music.generation.succeeded, music.generation.failed, music.generation.cancelled.",
        param="events.0",
        code="invalid_value",
    ),
    "unknown_parameter": example(
        "A field Chorus does not know",
        400,
        "Unrecognized request argument supplied: secret",
        param="secret",
        code="unknown_parameter",
    ),
    "invalid_callback_url": example(
        "A URL Chorus will not call (a private address, another port, a name that does not "
        "resolve)",
        400,
        "Invalid value for 'url': it is not allowed (10.0.0.0/8 is Private-Use (RFC1918)).",
        param="url",
        code="invalid_callback_url",
    ),
}

# ------------------------------------------------------------------ the signing secret

SECRET = {
    "object": "webhook.secret",
    "key": "whsec_MfKQ9r8GKYqrTywnOdbV3b4P1Ykk1hZb",
    "previous_valid_until": None,
}
SECRET_ROTATED = {
    "object": "webhook.secret",
    "key": "whsec_4nF0t7cXz2yQpL1m8VbR6sKd3WjH9eGa",
    "previous_valid_until": 1795356280,
}
TOO_MANY_ROTATIONS = example(
    "Rotated too often",
    429,
    "At most 5 webhook secrets can be made in an hour. Retry in 1740 seconds; the current "
    "secret keeps signing meanwhile.",
    code="too_many_rotations",
)["value"]

# ------------------------------------------------------------------ a job's deliveries

DELIVERY = {
    "id": _DELIVERY,
    "object": "webhook.delivery",
    "type": "music.generation.succeeded",
    "url": _URL,
    "status": "delivered",
    "created": 1795269878,
    "next_attempt_at": None,
    "delivered_at": 1795269909,
    "attempts": [
        {
            "attempt": 1,
            "manual": False,
            "at": 1795269878,
            "status_code": 503,
            "latency_ms": 212,
            "error": "HTTP 503",
        },
        {
            "attempt": 2,
            "manual": False,
            "at": 1795269909,
            "status_code": 200,
            "latency_ms": 148,
            "error": None,
        },
    ],
}
DELIVERY_LIST: dict[str, Any] = {"object": "list", "data": [DELIVERY]}
DELIVERY_REDELIVERED = {**DELIVERY, "status": "pending", "next_attempt_at": 1795270500}

JOB_NOT_FOUND = example(
    "Unknown job, or another org's",
    404,
    f"No music generation found with id '{_JOB}'.",
    param="id",
    code="not_found",
)
REDELIVER_404: dict[str, Any] = {
    "job_not_found": JOB_NOT_FOUND,
    "delivery_not_found": example(
        "No such delivery for this job",
        404,
        f"No delivery '{_DELIVERY}' for job '{_JOB}'.",
        param="delivery_id",
        code="not_found",
    ),
}

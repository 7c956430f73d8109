"""Error bodies in the shape each client surface expects.

``/v1`` speaks OpenAI's ``{"error": {"message", "type", "param", "code"}}`` so that OpenAI-style
clients (and the openai SDK's typed exceptions) understand it. ``/v2`` speaks AIMLAPI's
``{"message", "path", "requestId", "statusCode", "timestamp"}``, with AIMLAPI's status codes.

Errors are raised once, as ``ApiError`` with a ``/v1`` status and a stable ``code``;
``error_response`` renders them for the surface of the request at hand. The domain raises its
own refusals (``app.jobs.errors.Refused``), which know nothing of HTTP: ``from_domain`` is the
one place they get a status and a code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, has_request_context, jsonify, request

from app.api.request_id import request_id
from app.jobs import errors as domain

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


# Each domain refusal's status, code and extra headers; its message and param are its own.
REFUSALS: dict[type[domain.Refused], tuple[int, str, dict[str, str]]] = {
    domain.ModelNotFound: (400, "model_not_found", {}),
    domain.MissingInput: (400, "missing_required_parameter", {}),
    domain.LimitExceeded: (400, "invalid_value", {}),
    domain.UnsupportedInput: (400, "unsupported_parameter", {}),
    domain.BadDeadline: (400, "invalid_request", {}),
    domain.BadReferenceAudio: (400, "invalid_reference_audio", {}),
    domain.JobNotFound: (404, "not_found", {}),
    domain.NotCancellable: (409, "job_not_cancellable", {}),
    domain.InsufficientQuota: (429, "insufficient_quota", {}),
    # A place frees only when one of the org's jobs ends: the client is told when to look again.
    domain.TooManyActive: (429, "too_many_active_jobs", {"Retry-After": "10"}),
    # Fetches take seconds each (20 at most): a slot frees soon, and nothing was charged.
    domain.ReferenceFetchBusy: (503, "reference_fetch_busy", {"Retry-After": "5"}),
}


def from_domain(refusal: domain.Refused) -> ApiError:
    """The HTTP answer to a refusal of the domain's."""
    status, code, headers = REFUSALS[type(refusal)]
    return ApiError(status, refusal.message, param=refusal.param, code=code, headers=dict(headers))


def refusal_response(refusal: domain.Refused) -> Response:
    """The app's handler for every ``Refused``, in the request's surface."""
    return error_response(from_domain(refusal))


def openai_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def openai_response(error: ApiError) -> Response:
    response = jsonify(openai_body(error.status, error.message, param=error.param, code=error.code))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


V2_PREFIX = "/v2/"

# The same refusal, under AIMLAPI's status codes: it answers a bad key with 401 (the seed
# platform of /v1 with 403) and an empty balance with 403 "run out of credits" (/v1: 429).
V2_STATUS_BY_CODE = {"invalid_api_key": 401, "insufficient_quota": 403}
V2_MESSAGE_BY_CODE = {
    "insufficient_quota": "You've run out of credits: the balance is too low for this model. "
    "Top up and try again.",
}


def is_v2() -> bool:
    return has_request_context() and (request.path + "/").startswith(V2_PREFIX)


def aimlapi_body(status: int, message: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "message": message,
        "path": request.path,
        "requestId": request_id(),
        "statusCode": status,
        "timestamp": now,
    }


def aimlapi_response(error: ApiError) -> Response:
    status = V2_STATUS_BY_CODE.get(error.code or "", error.status)
    message = V2_MESSAGE_BY_CODE.get(error.code or "", error.message)
    if status == 400 and "validation error!" not in message:
        # AIMLAPI opens every 400 with where the problem is, then names the field.
        where = "Query" if request.method == "GET" else "Body"
        message = f"{where} validation error! {message}"
    response = jsonify(aimlapi_body(status, message))
    response.status_code = status
    response.headers.update(error.headers)
    return response


def error_response(error: ApiError) -> Response:
    """``error`` in the body and status of the surface the request came in on."""
    return aimlapi_response(error) if is_v2() else openai_response(error)


# The seed validates required fields in this order and reports the first one missing.
REQUIRED_ORDER = ("model", "catelogid", "prompt", "lyrics")


def from_validation(messages: dict[str, Any]) -> ApiError:
    """Turn marshmallow/webargs messages into one 400 naming the first offending field."""
    # webargs groups messages by location (json, query, headers…); report the first one.
    locations = ("json", "query", "headers", "form")
    fields = next((messages[loc] for loc in locations if loc in messages), messages)
    if not isinstance(fields, dict) or not fields:
        return ApiError(400, "Invalid request body.", code="invalid_request")
    order = [f for f in REQUIRED_ORDER if f in fields] + [
        f for f in fields if f not in REQUIRED_ORDER
    ]
    name = order[0]
    if name == "_schema":
        # The body parsed, but as a list, string or number: there is no field to name.
        return ApiError(400, "The request body must be a JSON object.", code="invalid_request")
    problem: Any = fields[name]
    # Nested errors (audio_setting, metadata) name the inner field, dotted; "_schema" means the
    # object itself, and "key"/"value" are marshmallow's Dict markers, not field names.
    while isinstance(problem, dict) and problem:
        inner = next(iter(problem))
        if inner not in ("_schema", "key", "value"):
            name = f"{name}.{inner}"
        problem = problem[inner]
    text = problem[0] if isinstance(problem, list) and problem else str(problem)
    if text == "Unknown field.":
        return ApiError(
            400,
            f"Unrecognized request argument supplied: {name}",
            param=name,
            code="unknown_parameter",
        )
    if text.startswith("Missing required parameter"):
        return ApiError(400, text, param=name, code="missing_required_parameter")
    return ApiError(400, f"Invalid value for '{name}': {text}", param=name, code="invalid_value")

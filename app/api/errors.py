"""Error bodies in the shape each client surface expects.

``/v1`` speaks OpenAI's ``{"error": {"message", "type", "param", "code"}}`` so that OpenAI-style
clients (and the openai SDK's typed exceptions) understand it.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
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

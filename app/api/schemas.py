"""Schemas every /v1 blueprint shares: OpenAI's error body, as the OpenAPI document shows it."""

from __future__ import annotations

from marshmallow import Schema, fields


class ErrorDetailSchema(Schema):
    message = fields.String(required=True, metadata={"description": "What went wrong, for people."})
    type = fields.String(
        required=True,
        metadata={
            "description": "OpenAI's error class: invalid_request_error, permission_error, "
            "not_found_error, rate_limit_error…"
        },
    )
    param = fields.String(
        required=True, allow_none=True, metadata={"description": "The offending field, if any."}
    )
    code = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "A stable machine-readable code, e.g. insufficient_quota."},
    )


class OpenAIErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)

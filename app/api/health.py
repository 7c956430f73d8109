"""``GET /healthz``: for load balancers and ``chorus dev``'s start-up wait."""

from __future__ import annotations

from flask import Response, jsonify
from marshmallow import Schema, fields
from sqlalchemy import text

from app.api.openapi import ApiBlueprint
from app.extensions import chorus

blp = ApiBlueprint("health", __name__, description="Whether the API is up.")


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok", "unhealthy"]})
    database = fields.String(
        metadata={"description": "When unhealthy: the kind of database fault."}
    )


@blp.route("/healthz")
@blp.response(200, HealthSchema, description="Up.", example={"status": "ok"})
@blp.alt_response(
    503,
    schema=HealthSchema,
    description="Up, but its database cannot be reached.",
    example={"status": "unhealthy", "database": "OperationalError"},
)
def healthz() -> tuple[Response, int]:
    """Up, and able to reach its database. Takes no key."""
    try:
        with chorus().db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database fault means "not healthy"
        return jsonify(status="unhealthy", database=type(exc).__name__), 503
    return jsonify(status="ok"), 200

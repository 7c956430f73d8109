"""The webhook API: the org's default endpoint, its signing secret, and each job's deliveries."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import select

from app.api import openapi
from app.api.auth import require_key
from app.api.errors import ApiError
from app.api.schemas import OpenAIErrorSchema
from app.api.webhooks import examples, urls
from app.db import utcnow
from app.extensions import chorus
from app.http import guard
from app.jobs import events
from app.jobs.queries import get_job
from app.webhooks import outbox, signing
from app.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

blp = openapi.ApiBlueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/webhooks",
    description="Where job events go, and the secret they are signed with.",
    bearer=True,
    rate_limited=True,
)
deliveries = openapi.ApiBlueprint(
    "deliveries",
    __name__,
    url_prefix="/v1/music/generations",
    description="A job's webhook deliveries: the log of attempts, and redelivery.",
    bearer=True,
    rate_limited=True,
)
blp.before_request(require_key)
deliveries.before_request(require_key)

JOB_ID = {
    "in": "path",
    "name": "job_id",
    "description": "The job's id, as the submit returned it.",
    "example": "luid_01m7z6rkxcmx0h7hnjr0bxppzc",
}
DELIVERY_ID = {
    "in": "path",
    "name": "delivery_id",
    "description": "The delivery's id (`msg_…`), sent as `webhook-id` on each of its attempts.",
    "example": "msg_01m7z6s3k9q2w8e4r5t6y7v8x9",
}


class EndpointArgs(Schema):
    class Meta:
        unknown = RAISE

    url = fields.Url(
        schemes={"http", "https"},
        required=True,
        validate=validate.Length(max=guard.MAX_URL_LENGTH),
        error_messages={"required": "Missing required parameter: url"},
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(events.EVENT_TYPES)),
        load_default=None,
        validate=validate.Length(min=1),
        metadata={"description": "Event types to send (default: all of them)."},
    )


class EndpointSchema(Schema):
    object = fields.String(metadata={"example": "webhook.endpoint"})
    url = fields.String()
    events = fields.List(fields.String())
    status = fields.String(metadata={"enum": ["enabled", "disabled"]})
    disabled_reason = fields.String(allow_none=True)
    created = fields.Integer()
    updated = fields.Integer()


class SecretSchema(Schema):
    object = fields.String(metadata={"example": "webhook.secret"})
    key = fields.String(metadata={"example": "whsec_…"})
    previous_valid_until = fields.Integer(allow_none=True)


class AttemptSchema(Schema):
    attempt = fields.Integer()
    manual = fields.Boolean()
    at = fields.Integer(metadata={"description": "unix seconds"})
    status_code = fields.Integer(allow_none=True)
    latency_ms = fields.Integer()
    error = fields.String(allow_none=True)


class DeliverySchema(Schema):
    id = fields.String(metadata={"description": "Sent as webhook-id on every attempt."})
    object = fields.String(metadata={"example": "webhook.delivery"})
    type = fields.String()
    url = fields.String()
    status = fields.String(metadata={"enum": list(outbox.DELIVERY_STATUSES)})
    created = fields.Integer()
    next_attempt_at = fields.Integer(allow_none=True)
    delivered_at = fields.Integer(allow_none=True)
    attempts = fields.List(fields.Nested(AttemptSchema))


class DeliveryListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(DeliverySchema))


def _unix(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def endpoint_object(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "object": "webhook.endpoint",
        "url": endpoint.url,
        "events": endpoint.events or list(events.EVENT_TYPES),
        "status": "disabled" if endpoint.disabled_at else "enabled",
        "disabled_reason": endpoint.disabled_reason,
        "created": _unix(endpoint.created_at),
        "updated": _unix(endpoint.updated_at),
    }


def delivery_object(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook.delivery",
        "type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "created": _unix(delivery.event_at),
        "next_attempt_at": _unix(delivery.next_attempt_at),
        "delivered_at": _unix(delivery.delivered_at),
        "attempts": [
            {
                "attempt": a.attempt,
                "manual": a.manual,
                "at": _unix(a.started_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in attempts
        ],
    }


def _no_endpoint() -> ApiError:
    return ApiError(404, "This org has no default webhook endpoint.", code="not_found")


@blp.route("/endpoint")
class Endpoint(MethodView):
    @blp.response(
        200, EndpointSchema, description="The org's endpoint.", examples=examples.ENDPOINTS
    )
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No endpoint set.",
        example=examples.NO_ENDPOINT,
    )
    def get(self) -> Response:
        """Read the org's default endpoint, where events go for jobs with no `callback_url`."""
        endpoint = _endpoint(g.api_key.org_id)
        if endpoint is None:
            raise _no_endpoint()
        return jsonify(endpoint_object(endpoint))

    @blp.arguments(EndpointArgs(), examples=examples.ENDPOINT_REQUESTS)
    @blp.response(
        200,
        EndpointSchema,
        description="The endpoint as set, `enabled`.",
        example=examples.ENDPOINT,
    )
    @blp.alt_response(
        400,
        schema=OpenAIErrorSchema,
        description="Missing or invalid input, or a URL Chorus will not call "
        "(`invalid_callback_url`); `param` names the field.",
        examples=examples.ENDPOINT_400,
    )
    def put(self, args: dict[str, Any]) -> Response:
        """Set (or replace) the org's default endpoint. Enables it again if a 410 disabled it."""
        ext = chorus()
        urls.check_param(args["url"], ext.settings, "url")
        session = ext.session()
        org_id = g.api_key.org_id
        endpoint = _endpoint(org_id, for_update=True)
        if endpoint is None:
            endpoint = WebhookEndpoint(org_id=org_id, url=args["url"])
            session.add(endpoint)
        endpoint.url = args["url"]
        endpoint.events = args["events"]
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
        endpoint.updated_at = utcnow()
        signing.current_secret(session, org_id)  # so the secret is there before any event
        session.commit()
        return jsonify(endpoint_object(endpoint))

    @blp.response(204, description="Removed.")
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No endpoint set.",
        example=examples.NO_ENDPOINT,
    )
    def delete(self) -> Response:
        """Remove the default endpoint; its deliveries still waiting are given up."""
        session = chorus().session()
        endpoint = _endpoint(g.api_key.org_id, for_update=True)
        if endpoint is None:
            raise _no_endpoint()
        outbox.remove_endpoint(session, endpoint)
        session.commit()
        return Response(status=204)


def _endpoint(org_id: int, *, for_update: bool = False) -> WebhookEndpoint | None:
    query = select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    if for_update:
        query = query.with_for_update()
    return chorus().session().scalar(query)


@blp.route("/secret")
class Secret(MethodView):
    @blp.response(
        200,
        SecretSchema,
        description="The current secret; `previous_valid_until` is always null here.",
        example=examples.SECRET,
    )
    def get(self) -> Response:
        """Read the org's current signing secret (`whsec_…`), created on first use."""
        session = chorus().session()
        key = signing.current_secret(session, g.api_key.org_id)
        session.commit()
        return jsonify(object="webhook.secret", key=key, previous_valid_until=None)


@blp.route("/secret/rotate")
class SecretRotation(MethodView):
    @blp.response(
        200,
        SecretSchema,
        description="The new secret; the previous one signs too until `previous_valid_until`.",
        example=examples.SECRET_ROTATED,
    )
    @blp.alt_response(
        429,
        schema=OpenAIErrorSchema,
        description="Too many rotations in the last hour; `Retry-After` says when to retry.",
        example=examples.TOO_MANY_ROTATIONS,
    )
    def post(self) -> Response:
        """Rotate the org's signing secret: a new one signs from now on.

        The previous one keeps signing (both signatures are sent) for
        `WEBHOOK_SECRET_OVERLAP` seconds, long enough to deploy the new one.
        """
        ext = chorus()
        session = ext.session()
        allowed_at = signing.next_rotation_at(session, g.api_key.org_id)
        if allowed_at is not None:
            wait = max(1, math.ceil((allowed_at - utcnow()).total_seconds()))
            raise ApiError(
                429,
                f"At most {signing.ROTATIONS_PER_HOUR} webhook secrets can be made in an hour. "
                f"Retry in {wait} seconds; the current secret keeps signing meanwhile.",
                code="too_many_rotations",
                headers={"Retry-After": str(wait)},
            )
        key, until = signing.rotate(session, g.api_key.org_id, ext.settings.webhook_secret_overlap)
        session.commit()
        return jsonify(object="webhook.secret", key=key, previous_valid_until=_unix(until))


@deliveries.route("/<job_id>/deliveries", parameters=[JOB_ID])
class Deliveries(MethodView):
    @deliveries.response(
        200,
        DeliveryListSchema,
        description="The job's deliveries, oldest first.",
        example=examples.DELIVERY_LIST,
    )
    @deliveries.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No such job for this key's org.",
        example=examples.JOB_NOT_FOUND["value"],
    )
    def get(self, job_id: str) -> Response:
        """List the job's webhook deliveries, oldest first, each with its attempts."""
        session = chorus().session()
        job = get_job(session, g.api_key, job_id)
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job.id)
            .order_by(WebhookDelivery.id)
        ).all()
        attempts = _attempts(session, [d.id for d in rows])
        data = [delivery_object(d, attempts.get(d.id, [])) for d in rows]
        return jsonify(object="list", data=data)


@deliveries.route("/<job_id>/deliveries/<delivery_id>/redeliver", parameters=[JOB_ID, DELIVERY_ID])
class Redeliver(MethodView):
    @deliveries.response(
        202,
        DeliverySchema,
        description="Accepted: the delivery, `pending`, due now.",
        example=examples.DELIVERY_REDELIVERED,
    )
    @deliveries.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No such job for this key's org, or no such delivery for the job.",
        examples=examples.REDELIVER_404,
    )
    def post(self, job_id: str, delivery_id: str) -> Response:
        """Send a delivery again, with the same `webhook-id`, as soon as a worker can.

        A delivery still being retried is simply tried now. A finished one (delivered, dead,
        disabled) gets one more attempt; its retry schedule does not start over.
        """
        session = chorus().session()
        job = get_job(session, g.api_key, job_id)
        delivery = session.scalar(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.job_id == job.id)
            .with_for_update()
        )
        if delivery is None:
            raise ApiError(
                404,
                f"No delivery '{delivery_id}' for job '{job_id}'.",
                param="delivery_id",
                code="not_found",
            )
        outbox.redeliver(delivery)
        session.commit()
        chorus().doorbell.ring()
        attempts = _attempts(session, [delivery.id])
        response = jsonify(delivery_object(delivery, attempts.get(delivery.id, [])))
        response.status_code = 202
        return response


def _attempts(session: Any, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {}
    if not delivery_ids:
        return found
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.id)
    ):
        found.setdefault(attempt.delivery_id, []).append(attempt)
    return found

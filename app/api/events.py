"""Live events: ``GET /v1/music/generations/{id}/events`` and ``GET /v1/events``.

The opening request is an ordinary /v1 request (key, rate limit, request id, errors, metrics):
it checks the job, reads ``Last-Event-ID`` and answers ``text/event-stream`` with the stored
events to replay. What follows live is not Flask's: the answer carries ``FOLLOW`` (the stream,
its position and its origin), and the web server's event loop (``app.streams``) strips it and
keeps the connection open, so no thread is held for the stream's lifetime. Served by plain
WSGI the stream simply ends after the replay; an SSE client reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from flask import Response, g, request
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields
from sqlalchemy import select

from app.api import openapi
from app.api.auth import read_job, require_key
from app.api.errors import ApiError
from app.api.jobs.examples import JOB_NOT_FOUND
from app.api.present import base_url, job_object
from app.api.schemas import OpenAIErrorSchema
from app.extensions import chorus
from app.jobs import journal
from app.jobs.journal import REPLAY_LIMIT, STREAM_EVENTS, TERMINAL_EVENTS, StoredEvent, frame
from app.jobs.models import Job
from app.jobs.queries import get_job
from app.jobs.status import JobStatus

# The private header telling ``app.streams`` to follow: ``job=<id>;after=<n>;base=<url>``
# or ``org=<id>;after=<n>;base=<url>`` (values percent-encoded).
FOLLOW = "X-Chorus-Follow"
# Longer ids than any bigserial holds are no position of ours.
MAX_ID_DIGITS = 18

blp = openapi.ApiBlueprint(
    "events",
    __name__,
    url_prefix="/v1",
    description="Live Server-Sent Event streams of a job and of an org.",
    bearer=True,
    rate_limited=True,
)
blp.before_request(require_key)

LAST_EVENT_ID = {
    "in": "header",
    "name": "Last-Event-ID",
    "description": "Resume after this event (the `id:` of the last one received); empty is "
    "as if absent.",
    "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"},
    "required": False,
}
JOB_ID = {
    "in": "path",
    "name": "job_id",
    "description": "The job's id, as the submit returned it.",
    "example": "luid_01m7z6rkxcmx0h7hnjr0bxppzc",
}
# Each event of the stream (comments aside), as OpenAPI 3.2 describes an SSE stream's items.
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {
            "type": "string",
            "description": "`music.generation.queued|running|succeeded|failed|cancelled`, or "
            "`progress` (job streams, while the job runs).",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The job object as `GET` renders it, as it is now; for `progress`, "
            '`{"id", "progress" (0.0-1.0), "eta" (unix seconds)}`.',
        },
        "id": {
            "type": "string",
            "description": "The event's position, for `Last-Event-ID` (none on `progress`).",
        },
    },
    "required": ["event", "data"],
}
STREAM = {
    "content": {
        "text/event-stream": {
            "itemSchema": EVENT_SCHEMA,
            "schema": {"type": "array", "items": EVENT_SCHEMA},
            "example": "id: 41\nevent: music.generation.running\ndata: {...}\n\n",
        }
    },
}
BAD_ID_EXAMPLE = openapi.example(
    "A Last-Event-ID that is no event's id",
    400,
    "Last-Event-ID must be the id: of an event this API sent (a whole number).",
    param="Last-Event-ID",
    code="invalid_value",
)


class EventsQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    last_event_id = fields.String(
        load_default=None,
        metadata={
            "description": "As the `Last-Event-ID` header, for clients that cannot set it.",
            "pattern": "^[0-9]{0,18}$",
        },
    )


def _position(args: dict[str, Any]) -> int | None:
    """``Last-Event-ID`` (header, else query; empty is absent), or None; 400 for either
    being what is no event's id."""
    header = _parse_id(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    query = _parse_id(args.get("last_event_id"), "last_event_id")
    return header if header is not None else query


def _parse_id(raw: str | None, param: str) -> int | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_ID_DIGITS:
        raise ApiError(
            400,
            f"{param} must be the id: of an event this API sent (a whole number).",
            param=param,
            code="invalid_value",
        )
    return int(raw)


def _check_capacity() -> None:
    ext = chorus()
    if ext.events.streams >= ext.settings.events_max_streams:
        raise ApiError(
            503,
            "Too many event streams are open on this server; retry in a moment.",
            code="unavailable",
            headers={"Retry-After": "1"},
        )


def _stream(body: bytes, follow: str | None) -> Response:
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # a buffering proxy would hold events back
    if follow is not None:
        response.headers[FOLLOW] = f"{follow};base={quote(base_url(), safe='')}"
    return response


DOC_400 = {"schema": OpenAIErrorSchema, "description": "A malformed `Last-Event-ID`."}
FULL_EXAMPLE = openapi.example(
    "This server holds as many streams as it may",
    503,
    "Too many event streams are open on this server; retry in a moment.",
    code="unavailable",
)
DOC_503 = {
    "schema": OpenAIErrorSchema,
    "examples": {"full": FULL_EXAMPLE},
    "description": "This server holds as many streams as it may (EVENTS_MAX_STREAMS); retry.",
    "headers": {"Retry-After": openapi.RETRY_AFTER},
}


@blp.route("/music/generations/<job_id>/events", parameters=[JOB_ID, LAST_EVENT_ID])
class JobEvents(MethodView):
    @blp.arguments(EventsQuerySchema(), location="query", unknown=RAISE)
    @blp.doc(responses={200: {"description": "The job's events, then its live ones.", **STREAM}})
    @blp.alt_response(400, examples={"last_event_id": BAD_ID_EXAMPLE}, **DOC_400)
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No such job for this key's org.",
        example=JOB_NOT_FOUND,
    )
    @blp.alt_response(503, **DOC_503)
    def get(self, args: dict[str, Any], job_id: str) -> Response:
        """Follow a job: one event per status change, to its end.

        First the job's stored events (those after `Last-Event-ID`), then live ones;
        `event: progress` while it runs; the stream ends after the terminal event.
        """
        after = _position(args) or 0
        job = read_job(job_id)
        ext = chorus()
        events = journal.replay(ext.session(), after=after, job_id=job.id)
        if events and events[-1].type != STREAM_EVENTS[JobStatus(job.status)]:
            job = get_job(ext.session(), g.api_key, job_id)  # moved on since the key's read
        ended = any(e.type in TERMINAL_EVENTS for e in events) or (
            JobStatus(job.status).terminal and len(events) < REPLAY_LIMIT
        )
        if not ended:
            _check_capacity()
        data = json.dumps(job_object(job, ext.storage))
        body = b"".join(frame(e.type, data, e.id) for e in events)
        last = events[-1].id if events else after
        return _stream(body, None if ended else f"job={quote(job.id, safe='')};after={last}")


@blp.route("/events", parameters=[LAST_EVENT_ID])
class OrgEvents(MethodView):
    @blp.arguments(EventsQuerySchema(), location="query", unknown=RAISE)
    @blp.doc(responses={200: {"description": "The org's job events, live.", **STREAM}})
    @blp.alt_response(400, examples={"last_event_id": BAD_ID_EXAMPLE}, **DOC_400)
    @blp.alt_response(503, **DOC_503)
    def get(self, args: dict[str, Any]) -> Response:
        """Follow every job of the org: one event per status change, never ending.

        With `Last-Event-ID`, the events after it first; without, from now on.
        """
        position = _position(args)
        ext = chorus()
        session = ext.session()
        org_id = g.api_key.org_id
        _check_capacity()
        if position is None:
            return _stream(b"", f"org={org_id};after={journal.last_id(session)}")
        events = journal.replay(session, after=position, org_id=org_id)
        body = b"".join(_org_frames(session, events))
        last = events[-1].id if events else position
        return _stream(body, f"org={org_id};after={last}")


def _org_frames(session: Any, events: list[StoredEvent]) -> list[bytes]:
    """Each event with its job as it is now (the jobs read in one query)."""
    ids = sorted({e.job_id for e in events})
    jobs = (
        {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
    )
    storage = chorus().storage
    data = {job_id: json.dumps(job_object(job, storage)) for job_id, job in jobs.items()}
    return [frame(e.type, data[e.job_id], e.id) for e in events if e.job_id in data]

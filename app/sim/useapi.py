"""useapi.net's MiniMax music: ``POST /v1/minimax/music/create``, then ``GET …/<musicId>``.

One generation at a time per upstream account, where the account is the pair (bearer token,
``account`` field or ""); a create while that account still runs a song answers 429.

``DELETE /v1/minimax/scheduler/<musicId>`` takes a running generation off useapi's tracking:
204 while it runs, 404 otherwise. Like useapi, it does not stop the song, so the account stays
busy until the song is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response

from app.sim.audio import DEFAULT_SAMPLE_RATE
from app.sim.calls import Call, marked_failure, poll_call, submit_call
from app.sim.common import (
    REASONS,
    BadRequest,
    Markers,
    audio_url,
    bearer,
    garbage_response,
    json_response,
    make_generation,
    parse_markers,
)
from app.sim.data import (
    USEAPI_COMPLETED,
    USEAPI_MODERATED,
    USEAPI_PENDING,
    USEAPI_PROCESSING,
    USEAPI_UNKNOWN,
    Generation,
    Outcome,
)
from app.sim.state import SimState

CREATE_PATH = "/v1/minimax/music/create"
STATUS_PREFIX = "/v1/minimax/music/"
# Status GETs are recorded under this one shared string; the id is in ``generation_id``.
STATUS_PATH = "/v1/minimax/music/{musicId}"
SCHEDULER_PREFIX = "/v1/minimax/scheduler/"
SCHEDULER_PATH = "/v1/minimax/scheduler/{id}"

BUSY_MESSAGE = "The previous request has not been completed yet. Please try again later."
STATUS_LABELS = {
    USEAPI_PENDING: "pending",
    USEAPI_PROCESSING: "processing",
    USEAPI_COMPLETED: "completed",
    USEAPI_UNKNOWN: "mystery-state",
    USEAPI_MODERATED: "moderated",
}

# What a submit-failing marker answers with.
MARKED_FAILURES = {503: "Service unavailable", 401: "Unauthorized", 429: BUSY_MESSAGE}

MARKERS = frozenset(
    {
        "moderated",
        "moderated-prompt",
        "post-moderated",
        "unknown-status",
        "never",
        "garbage",
        "poll-5xx",
        "poll-hang",
        "submit-5xx",
        "submit-401",
        "submit-429",
        "submit-hang",
        "latency",
    }
)


def account_key(token: str, account: str | None) -> str:
    """How the record names a useapi account: ``"<bearer token>|<account field or ''>"``."""
    return f"{token}|{account or ''}"


@dataclass(frozen=True)
class CreateBody:
    prompt: str
    model: str
    title: str | None
    lyrics: str | None
    instrumental: bool
    account: str | None


def register(app: Flask, state: SimState) -> None:
    @app.post(CREATE_PATH)
    def create() -> Response:
        call, data = submit_call(state, CREATE_PATH)
        faulted = call.submit_fault(error)
        if faulted is not None:
            return faulted
        if call.auth is None:
            return call.done(error(401, "Unauthorized"))
        try:
            body = parse_create(data)
            markers = parse_markers(body.prompt, MARKERS)
        except BadRequest as exc:
            return call.done(error(400, str(exc)))
        code = marked_failure(markers)
        if code is not None:
            # A simulated busy answer (429) is not counted in the account's rejected_busy.
            return call.done(error(code, MARKED_FAILURES[code]))

        account = account_key(call.auth, body.account)
        if "moderated-prompt" in markers.flags:
            # useapi checks its own account slot before MiniMax looks at the prompt.
            if not state.check_idle("useapi", account, call.at):
                return call.done(error(429, BUSY_MESSAGE))
            return call.done(json_response({"error": "Moderated prompt"}, 422))

        gen = _new_generation(state, body, markers, call.auth, account, created_at=call.at)
        if not state.add_generation(gen, one_at_a_time=True):
            return call.done(error(429, BUSY_MESSAGE))
        resp = json_response({"musicId": gen.id, "status": 0, "statusLabel": "pending"}, 200)
        return call.done_late(resp, gen.id, markers.submit_hang)

    @app.get(STATUS_PREFIX + "<path:music_id>")
    def status(music_id: str) -> Response:
        call = poll_call(state, STATUS_PATH, music_id)
        faulted, status_word = call.poll_fault(error)
        if faulted is not None:
            return faulted
        if call.auth is None:
            return call.done(error(401, "Unauthorized"))

        call.poll_hang()
        seen = state.observe_useapi_poll(
            music_id, state.clock(), reveals_status=status_word is None
        )
        if seen is None:
            return call.done(error(404, "Not found."))
        gen, code = seen
        if gen.garbage:
            return call.done(garbage_response())
        if gen.poll_5xx:
            return call.done(error(502, "Bad Gateway"))
        label = STATUS_LABELS[code]
        if status_word is not None:
            # A one-shot status_word fault: a number is reported as the status, a word as label.
            code = int(status_word) if status_word.isdigit() else USEAPI_UNKNOWN
            label = status_word
        body = {
            "musicId": gen.id,
            "title": gen.title,
            "lyrics": gen.lyrics or "",
            "status": code,
            "statusLabel": label,
            "statusFinal": code in (USEAPI_COMPLETED, USEAPI_MODERATED),
            "audioURL": audio_url(gen.id) if code == USEAPI_COMPLETED else None,
            "duration": gen.audio_seconds,
            "createTime": _iso(gen.created_at),
        }
        return call.done(json_response(body, 200))

    @app.delete(SCHEDULER_PREFIX + "<path:music_id>")
    def untrack(music_id: str) -> Response:
        call = Call(
            state, "cancel", SCHEDULER_PATH, state.clock(), bearer(), generation_id=music_id
        )
        if call.auth is None:
            return call.done(error(401, "Unauthorized"))
        if state.running_useapi(music_id, call.at) is None:
            return call.done(error(404, f"Unable to locate running {music_id}"))
        return call.done(Response(status=204))


def _new_generation(
    state: SimState,
    body: CreateBody,
    markers: Markers,
    token: str,
    account: str,
    created_at: float,
) -> Generation:
    outcome: Outcome = "completed"
    error_name = error_message = None
    if "never" in markers.flags:
        outcome = "never"
    elif "moderated" in markers.flags:
        outcome = "error"
        error_name = "ModerationError"
        error_message = "The song was moderated (simulated)."
    lyrics = None if body.instrumental else body.lyrics
    number = state.next_music_number()
    return make_generation(
        state,
        markers,
        generation_id=f"user:1-minimax:{body.account or 'default'}-music:{number}",
        protocol="useapi",
        model=body.model,
        prompt=body.prompt,
        lyrics=lyrics,
        auth=token,
        account=account,
        created_at=created_at,
        sample_rate=DEFAULT_SAMPLE_RATE,
        outcome=outcome,
        error_name=error_name,
        error_message=error_message,
        title=body.title or "",
    )


def parse_create(data: Any) -> CreateBody:
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("Parameter prompt is required")
    fields: dict[str, str | None] = {}
    for key in ("model", "title", "lyrics", "account"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Parameter {key} must be a string")
        fields[key] = value
    instrumental = data.get("instrumental", False)
    if not isinstance(instrumental, bool):
        raise BadRequest("Parameter instrumental must be a boolean")
    return CreateBody(
        prompt=prompt,
        model=fields["model"] or "",
        title=fields["title"],
        lyrics=fields["lyrics"],
        instrumental=instrumental,
        account=fields["account"] or None,
    )


def error(status: int, message: str | None = None) -> Response:
    """useapi.net's error shape: ``{"error": <message>, "code": <status>}``."""
    return json_response({"error": message or REASONS.get(status, "Error"), "code": status}, status)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

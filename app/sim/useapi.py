"""useapi.net's MiniMax music: ``POST /v1/minimax/music/create``, then ``GET …/<musicId>``.

One generation at a time per upstream account, where the account is the pair (bearer token,
``account`` field or ""); a create while that account still runs a song answers 429.

``DELETE /v1/minimax/scheduler/<musicId>`` takes a running generation off useapi's tracking:
204 while it runs, 404 otherwise. Like useapi, it does not stop the song, so the account stays
busy until the song is made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response

from app.sim.audio import DEFAULT_SAMPLE_RATE, derive_duration, frame_count
from app.sim.common import (
    REASONS,
    BadRequest,
    Markers,
    apply_fault,
    audio_url,
    bearer,
    draw_latency,
    garbage_response,
    json_body,
    json_response,
    parse_markers,
    record,
)
from app.sim.data import (
    USEAPI_COMPLETED,
    USEAPI_MODERATED,
    USEAPI_PENDING,
    USEAPI_PROCESSING,
    USEAPI_UNKNOWN,
    Generation,
    Outcome,
    fingerprint,
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
        at = state.clock()
        auth = bearer()
        data, prompt = json_body()

        def done(resp: Response, generation_id: str | None = None) -> Response:
            return record(
                state,
                at=at,
                kind="submit",
                path=CREATE_PATH,
                generation_id=generation_id,
                resp=resp,
                auth=auth,
                prompt=prompt,
            )

        fault = state.take_fault("submit")
        if fault is not None:
            resp = apply_fault(fault, error)
            if resp is not None:
                return done(resp)
        if auth is None:
            return done(error(401, "Unauthorized"))
        try:
            body = parse_create(data)
            markers = parse_markers(body.prompt, MARKERS)
        except BadRequest as exc:
            return done(error(400, str(exc)))
        if "submit-5xx" in markers.flags:
            return done(error(503, "Service unavailable"))
        if "submit-401" in markers.flags:
            return done(error(401, "Unauthorized"))
        if "submit-429" in markers.flags:
            # A simulated busy answer: not counted in the account's rejected_busy.
            return done(error(429, BUSY_MESSAGE))

        account = account_key(auth, body.account)
        if "moderated-prompt" in markers.flags:
            # useapi checks its own account slot before MiniMax looks at the prompt.
            if not state.check_idle("useapi", account, at):
                return done(error(429, BUSY_MESSAGE))
            return done(json_response({"error": "Moderated prompt"}, 422))

        gen = _new_generation(state, body, markers, auth, account, created_at=at)
        if not state.add_generation(gen, one_at_a_time=True):
            return done(error(429, BUSY_MESSAGE))
        resp = json_response({"musicId": gen.id, "status": 0, "statusLabel": "pending"}, 200)
        done(resp, gen.id)
        if markers.submit_hang > 0:
            # The song is already being made; the slow answer provokes a client read timeout.
            time.sleep(markers.submit_hang)
        return resp

    @app.get(STATUS_PREFIX + "<path:music_id>")
    def status(music_id: str) -> Response:
        at = state.clock()
        auth = bearer()

        def done(resp: Response) -> Response:
            return record(
                state,
                at=at,
                kind="poll",
                path=STATUS_PATH,
                generation_id=music_id,
                resp=resp,
                auth=auth,
            )

        status_word: str | None = None
        fault = state.take_fault("poll")
        if fault is not None:
            resp = apply_fault(fault, error)
            if resp is not None:
                state.count_poll(music_id)
                return done(resp)
            status_word = fault.status_word
        if auth is None:
            return done(error(401, "Unauthorized"))

        known = state.get(music_id)
        if known is not None and known.poll_hang > 0:
            time.sleep(known.poll_hang)
        # The status is taken after any hang: that is when the answer leaves.
        seen = state.observe_useapi_poll(
            music_id, state.clock(), reveals_status=status_word is None
        )
        if seen is None:
            return done(error(404, "Not found."))
        gen, code = seen
        if gen.garbage:
            return done(garbage_response())
        if gen.poll_5xx:
            return done(error(502, "Bad Gateway"))
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
        return done(json_response(body, 200))

    _register_scheduler(app, state)


def _register_scheduler(app: Flask, state: SimState) -> None:
    @app.delete(SCHEDULER_PREFIX + "<path:music_id>")
    def untrack(music_id: str) -> Response:
        at = state.clock()
        auth = bearer()
        if auth is None:
            resp = error(401, "Unauthorized")
        elif state.running_useapi(music_id, at) is None:
            resp = error(404, f"Unable to locate running {music_id}")
        else:
            resp = Response(status=204)
        return record(
            state,
            at=at,
            kind="cancel",
            path=SCHEDULER_PATH,
            generation_id=music_id,
            resp=resp,
            auth=auth,
        )


def _new_generation(
    state: SimState,
    body: CreateBody,
    markers: Markers,
    token: str,
    account: str,
    created_at: float,
) -> Generation:
    cfg = state.config
    latency = draw_latency(cfg, markers)
    outcome: Outcome = "completed"
    error_name = error_message = None
    if "never" in markers.flags:
        outcome = "never"
    elif "moderated" in markers.flags:
        outcome = "error"
        error_name = "ModerationError"
        error_message = "The song was moderated (simulated)."
    lyrics = None if body.instrumental else body.lyrics
    seconds = derive_duration(lyrics, cfg.audio_seconds)
    rate = DEFAULT_SAMPLE_RATE
    frames = frame_count(seconds, rate)
    number = state.next_music_number()
    return Generation(
        id=f"user:1-minimax:{body.account or 'default'}-music:{number}",
        model=body.model,
        prompt=body.prompt,
        lyrics=lyrics,
        auth=token,
        created_at=created_at,
        latency=latency,
        ready_at=None if outcome == "never" else created_at + latency,
        outcome=outcome,
        error_name=error_name,
        error_message=error_message,
        audio_seconds=frames / rate,
        sample_rate=rate,
        fingerprint=fingerprint(body.model, body.prompt, lyrics, account, "useapi"),
        unknown_status="unknown-status" in markers.flags,
        garbage="garbage" in markers.flags,
        poll_5xx="poll-5xx" in markers.flags,
        poll_hang=markers.poll_hang,
        protocol="useapi",
        account=account,
        title=body.title or "",
        post_moderated=markers.post_moderated,
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

"""AIMLAPI's ``/v2/generate/audio`` protocol: submit, then poll (also served for Apilaplas)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, request

from app.sim.audio import DEFAULT_SAMPLE_RATE, SAMPLE_RATES
from app.sim.calls import marked_failure, poll_call, submit_call
from app.sim.common import (
    FLAG_MARKERS,
    SECONDS_MARKERS,
    BadRequest,
    Markers,
    audio_link,
    bearer_of,
    garbage_response,
    json_response,
    make_generation,
    parse_markers,
    required_string,
)
from app.sim.data import Generation, Outcome, PollView
from app.sim.state import SimState

API_PATH = "/v2/generate/audio"

BITRATES = frozenset({32000, 64000, 128000, 256000})
FORMATS = frozenset({"mp3", "wav", "pcm"})

# Every flag but MiniMax's link field and useapi's prompt check; every delay but useapi's strike.
MARKERS = (FLAG_MARKERS - {"audio-url-field", "moderated-prompt"}) | (
    SECONDS_MARKERS - {"post-moderated"}
)
# What a submit-failing marker answers with.
MARKED_FAILURES = {
    503: "Service unavailable",
    401: "Unauthorized: invalid API key",
    429: "Too Many Requests",
}


@dataclass(frozen=True)
class SubmitBody:
    model: str
    prompt: str
    lyrics: str | None
    sample_rate: int
    # MiniMax's flags, which AIMLAPI's minimax/music-2.6 takes.
    options: dict[str, bool] = field(default_factory=dict)


def register(app: Flask, state: SimState) -> None:
    # The API path is a constant; sharing one string keeps the record small.
    @app.post(API_PATH)
    def submit() -> Response:
        call, data = submit_call(state, API_PATH)
        faulted = call.submit_fault(error)
        if faulted is not None:
            return faulted
        if call.auth is None:
            return call.done(error(401, "Unauthorized: missing API key"))
        try:
            body = parse_submit(data)
            markers = parse_markers(body.prompt, MARKERS)
        except BadRequest as exc:
            msg = str(exc)
            if not msg.startswith("Body validation error!"):
                msg = f"Body validation error! {msg}"
            return call.done(error(400, msg))
        code = marked_failure(markers)
        if code is not None:
            resp = error(code, MARKED_FAILURES[code])
            if code == 429:
                resp.headers["Retry-After"] = "2"
            return call.done(resp)

        gen = new_generation(state, body, markers, call.auth, created_at=call.at)
        state.add_generation(gen)
        resp = json_response({"id": gen.id, "status": "queued"}, 201)
        return call.done_late(resp, gen.id, markers.submit_hang)

    @app.get(API_PATH)
    def poll() -> Response:
        call = poll_call(state, API_PATH, request.args.get("generation_id") or None)
        faulted, status_word = call.poll_fault(error)
        if faulted is not None:
            return faulted
        if call.auth is None:
            return call.done(error(401, "Unauthorized: missing API key"))
        if call.generation_id is None:
            return call.done(error(400, "Query validation error! generation_id: Required"))

        call.poll_hang()
        view = state.observe_poll(
            call.generation_id, state.clock(), reveals_status=status_word is None
        )
        if view is None:
            return call.done(error(404, "Generation not found"))
        if view.garbage:
            return call.done(garbage_response())
        if view.poll_5xx:
            return call.done(error(502, "Bad Gateway"))
        body = status_body(view, status_word or view.status, request.host_url)
        return call.done(json_response(body, 200))


def status_body(view: PollView, status: str, host_url: str) -> dict[str, Any]:
    """A 200 status answer: ``{id, status, audio_file, error}``."""
    audio_file = {"url": audio_link(host_url, view.id)} if status == "completed" else None
    err = None
    if status == "error":
        err = {"name": view.error_name, "message": view.error_message}
    return {"id": view.id, "status": status, "audio_file": audio_file, "error": err}


def quick_poll(state: SimState, environ: dict[str, Any]) -> bytes | None:
    """The plain status GET answered without Flask, or None to let Flask answer it.

    Plain: a bearer key, a known generation, no fault queued, no marker that changes the
    answer (hang, garbage, 5xx). It answers exactly what the Flask route answers and records
    the same entry; it exists because the benchmark polls a few hundred times a second on a
    machine the simulator shares with Chorus, and Flask's request handling was most of the
    simulator's cost per poll.
    """
    at = state.clock()
    auth = bearer_of(environ.get("HTTP_AUTHORIZATION", ""))
    if auth is None or state.has_faults("poll"):
        return None
    found = parse_qs(environ.get("QUERY_STRING", "")).get("generation_id")
    gen_id = found[0] if found else None
    known = state.get(gen_id) if gen_id else None
    if known is None or known.protocol != "aimlapi" or known.poll_hang > 0:
        return None
    if known.garbage or known.poll_5xx:
        return None
    view = state.observe_poll(known.id, state.clock())
    if view is None:
        return None
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    body = status_body(view, view.status, f"{environ['wsgi.url_scheme']}://{host}/")
    state.record_request(
        at=at,
        method="GET",
        path=API_PATH,
        kind="poll",
        generation_id=known.id,
        status_code=200,
        auth=auth,
    )
    return json.dumps(body, separators=(",", ":")).encode()


def new_generation(
    state: SimState, body: SubmitBody, markers: Markers, auth: str, created_at: float
) -> Generation:
    outcome: Outcome = "completed"
    error_name = error_message = None
    if "never" in markers.flags:
        outcome = "never"
    elif "moderated" in markers.flags:
        outcome = "error"
        error_name = "ModerationError"
        error_message = "The request was rejected by content moderation (simulated)."
    elif "error" in markers.flags:
        outcome = "error"
        error_name = "GenerationError"
        error_message = "The generation failed upstream (simulated)."
    gen = make_generation(
        state,
        markers,
        generation_id=f"{uuid.uuid4()}:{body.model}",
        protocol="aimlapi",
        model=body.model,
        prompt=body.prompt,
        lyrics=body.lyrics,
        auth=auth,
        account=auth,
        created_at=created_at,
        sample_rate=body.sample_rate,
        outcome=outcome,
        error_name=error_name,
        error_message=error_message,
    )
    gen.options = dict(body.options)
    return gen


def parse_submit(data: Any) -> SubmitBody:
    """Validate a submit body the way AIMLAPI does (field types and enums), or raise."""
    if not isinstance(data, dict):
        raise BadRequest("Body validation error! Expected a JSON object")
    problems: list[str] = []
    model = required_string(data, "model", "model: Required string", problems)
    prompt = required_string(data, "prompt", "prompt: Required string", problems)
    for key in ("lyrics", "reference_audio_url"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key}: Expected string")
    options: dict[str, bool] = {}
    for flag in ("is_instrumental", "lyrics_optimizer"):
        if flag in data:
            if not isinstance(data[flag], bool):
                problems.append(f"{flag}: Expected boolean")
            else:
                options[flag] = data[flag]

    sample_rate = DEFAULT_SAMPLE_RATE
    setting = data.get("audio_setting")
    if setting is not None:
        if not isinstance(setting, dict):
            problems.append("audio_setting: Expected object")
        else:
            # AIMLAPI's docs renamed the key to audio_sample_rate; accept either, or both if equal.
            rates = [setting[k] for k in ("sample_rate", "audio_sample_rate") if k in setting]
            if len(rates) == 2 and rates[0] != rates[1]:
                problems.append("audio_setting: sample_rate and audio_sample_rate disagree")
            elif rates:
                rate = rates[0]
                if not is_int(rate) or rate not in SAMPLE_RATES:
                    problems.append(
                        f"audio_setting.sample_rate: Expected one of {sorted(SAMPLE_RATES)}"
                    )
                else:
                    sample_rate = int(rate)
            bitrate = setting.get("bitrate")
            if bitrate is not None and (not is_int(bitrate) or bitrate not in BITRATES):
                problems.append(f"audio_setting.bitrate: Expected one of {sorted(BITRATES)}")
            fmt = setting.get("format")
            if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
                problems.append(f"audio_setting.format: Expected one of {sorted(FORMATS)}")
    if problems:
        raise BadRequest("Body validation error! " + "; ".join(problems))
    lyrics = data.get("lyrics")
    return SubmitBody(
        model=model, prompt=prompt, lyrics=lyrics, sample_rate=sample_rate, options=options
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def error(status: int, message: str) -> Response:
    """An error in AIMLAPI's shape: ``{message, path, requestId, statusCode, timestamp}``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {
        "message": message,
        "path": request.path,
        "requestId": str(uuid.uuid4()),
        "statusCode": status,
        "timestamp": now,
    }
    return json_response(body, status)

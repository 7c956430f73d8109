"""AIMLAPI's ``/v2/generate/audio`` protocol: submit, then poll (also served for Apilaplas)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, request

from app.sim.audio import DEFAULT_SAMPLE_RATE, SAMPLE_RATES, derive_duration, frame_count
from app.sim.common import (
    BadRequest,
    Markers,
    apply_fault,
    audio_link,
    bearer,
    bearer_of,
    draw_latency,
    garbage_response,
    json_body,
    json_response,
    parse_markers,
    record,
)
from app.sim.data import Generation, Kind, Outcome, PollView, fingerprint
from app.sim.state import SimState

API_PATH = "/v2/generate/audio"

BITRATES = frozenset({32000, 64000, 128000, 256000})
FORMATS = frozenset({"mp3", "wav", "pcm"})

MARKERS = frozenset(
    {
        "error",
        "moderated",
        "unknown-status",
        "garbage",
        "poll-5xx",
        "submit-5xx",
        "submit-401",
        "submit-429",
        "never",
        "submit-hang",
        "poll-hang",
        "latency",
    }
)


@dataclass(frozen=True)
class SubmitBody:
    model: str
    prompt: str
    lyrics: str | None
    sample_rate: int


def register(app: Flask, state: SimState) -> None:
    def done(
        at: float,
        kind: Kind,
        generation_id: str | None,
        resp: Response,
        auth: str | None,
        prompt: str | None = None,
    ) -> Response:
        # The API path is a constant; sharing one string keeps the record small.
        return record(
            state,
            at=at,
            kind=kind,
            path=API_PATH,
            generation_id=generation_id,
            resp=resp,
            auth=auth,
            prompt=prompt,
        )

    @app.post(API_PATH)
    def submit() -> Response:
        at = state.clock()
        auth = bearer()
        data, prompt = json_body()
        fault = state.take_fault("submit")
        if fault is not None:
            # Infrastructure faults hit before the upstream looks at the request: nothing is made.
            resp = apply_fault(fault, error)
            if resp is not None:
                return done(at, "submit", None, resp, auth, prompt)
        if auth is None:
            return done(
                at, "submit", None, error(401, "Unauthorized: missing API key"), auth, prompt
            )
        try:
            body = parse_submit(data)
            markers = parse_markers(body.prompt, MARKERS)
        except BadRequest as exc:
            msg = str(exc)
            if not msg.startswith("Body validation error!"):
                msg = f"Body validation error! {msg}"
            return done(at, "submit", None, error(400, msg), auth, prompt)

        if "submit-5xx" in markers.flags:
            return done(at, "submit", None, error(503, "Service unavailable"), auth, prompt)
        if "submit-401" in markers.flags:
            resp = error(401, "Unauthorized: invalid API key")
            return done(at, "submit", None, resp, auth, prompt)
        if "submit-429" in markers.flags:
            resp = error(429, "Too Many Requests")
            resp.headers["Retry-After"] = "2"
            return done(at, "submit", None, resp, auth, prompt)

        gen = new_generation(state, body, markers, auth, created_at=at)
        state.add_generation(gen)
        resp = json_response({"id": gen.id, "status": "queued"}, 201)
        done(at, "submit", gen.id, resp, auth, prompt)
        if markers.submit_hang > 0:
            # The job already exists upstream; the slow answer provokes a client read timeout.
            time.sleep(markers.submit_hang)
        return resp

    @app.get(API_PATH)
    def poll() -> Response:
        at = state.clock()
        auth = bearer()
        gen_id = request.args.get("generation_id") or None
        status_word: str | None = None
        fault = state.take_fault("poll")
        if fault is not None:
            resp = apply_fault(fault, error)
            if resp is not None:
                if gen_id is not None:
                    state.count_poll(gen_id)
                return done(at, "poll", gen_id, resp, auth)
            status_word = fault.status_word
        if auth is None:
            return done(at, "poll", gen_id, error(401, "Unauthorized: missing API key"), auth)
        if gen_id is None:
            msg = "Query validation error! generation_id: Required"
            return done(at, "poll", None, error(400, msg), auth)

        known = state.get(gen_id)
        if known is not None and known.poll_hang > 0:
            time.sleep(known.poll_hang)
        # The status is taken after any hang: that is when the answer leaves.
        view = state.observe_poll(gen_id, state.clock(), reveals_status=status_word is None)
        if view is None:
            return done(at, "poll", gen_id, error(404, "Generation not found"), auth)
        if view.garbage:
            return done(at, "poll", gen_id, garbage_response(), auth)
        if view.poll_5xx:
            return done(at, "poll", gen_id, error(502, "Bad Gateway"), auth)

        body = status_body(view, status_word or view.status, request.host_url)
        return done(at, "poll", gen_id, json_response(body, 200), auth)


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
    state: SimState, body: SubmitBody, markers: Markers, auth: str | None, created_at: float
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
        error_message = "The request was rejected by content moderation (simulated)."
    elif "error" in markers.flags:
        outcome = "error"
        error_name = "GenerationError"
        error_message = "The generation failed upstream (simulated)."

    seconds = derive_duration(body.lyrics, cfg.audio_seconds)
    frames = frame_count(seconds, body.sample_rate)
    return Generation(
        id=f"{uuid.uuid4()}:{body.model}",
        model=body.model,
        prompt=body.prompt,
        lyrics=body.lyrics,
        auth=auth,
        created_at=created_at,
        latency=latency,
        ready_at=None if outcome == "never" else created_at + latency,
        outcome=outcome,
        error_name=error_name,
        error_message=error_message,
        # What the WAV will really hold, after rounding to whole frames.
        audio_seconds=frames / body.sample_rate,
        sample_rate=body.sample_rate,
        fingerprint=fingerprint(body.model, body.prompt, body.lyrics, auth),
        unknown_status="unknown-status" in markers.flags,
        garbage="garbage" in markers.flags,
        poll_5xx="poll-5xx" in markers.flags,
        poll_hang=markers.poll_hang,
        protocol="aimlapi",
        account=auth,
    )


def parse_submit(data: Any) -> SubmitBody:
    """Validate a submit body the way AIMLAPI does (field types and enums), or raise."""
    if not isinstance(data, dict):
        raise BadRequest("Body validation error! Expected a JSON object")
    problems: list[str] = []
    model = data.get("model")
    prompt = data.get("prompt")
    if not isinstance(model, str) or not model.strip():
        problems.append("model: Required string")
        model = ""
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("prompt: Required string")
        prompt = ""
    for key in ("lyrics", "reference_audio_url"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key}: Expected string")

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
    return SubmitBody(model=model, prompt=prompt, lyrics=lyrics, sample_rate=sample_rate)


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

"""The upstream simulator: an HTTP server that speaks AIMLAPI's music protocol.

Chorus's workers call it exactly as they call ``https://api.aimlapi.com``, so the whole system
can be tested and benchmarked offline. Two ways to inject faults:

* markers in the prompt (``[sim:error]``, ``[sim:poll-hang=3]`` ...), so concurrent test jobs can
  each ask for their own behaviour;
* the control API under ``/_sim`` (config, one-shot faults, reset, the request record).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from app.sim.audio import (
    DEFAULT_SAMPLE_RATE,
    SAMPLE_RATES,
    derive_duration,
    frame_count,
    wav_bytes,
)
from app.sim.state import (
    Fault,
    FaultTarget,
    Generation,
    Kind,
    Outcome,
    SimConfig,
    SimState,
    fingerprint,
)
from config.settings import Settings

__all__ = ["STATE_KEY", "SimState", "create_sim_app", "sim_state"]

API_PATH = "/v2/generate/audio"
AUDIO_PREFIX = "/_sim/audio/"
STATE_KEY = "chorus_sim"

BITRATES = frozenset({32000, 64000, 128000, 256000})
FORMATS = frozenset({"mp3", "wav", "pcm"})
GARBAGE_BODY = "<html>oops</html>"

# Prompt markers: flags, and the ones that carry a number of seconds.
_MARKER = re.compile(r"\[sim:([a-z0-9-]+)(?:=([^\]]*))?\]")
_FLAG_MARKERS = frozenset(
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
    }
)
_SECONDS_MARKERS = frozenset({"submit-hang", "poll-hang", "latency"})

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service unavailable",
    504: "Generation timeout",
}


@dataclass(frozen=True)
class Markers:
    flags: frozenset[str]
    submit_hang: float = 0.0
    poll_hang: float = 0.0
    latency: float | None = None


@dataclass(frozen=True)
class SubmitBody:
    model: str
    prompt: str
    lyrics: str | None
    sample_rate: int


class BadRequest(ValueError):
    """A request body the simulator rejects with 400, carrying AIMLAPI's style of message."""


def create_sim_app(settings: Settings, *, state: SimState | None = None) -> Flask:
    """A plain Flask app serving the AIMLAPI protocol and the ``/_sim`` control API.

    ``state`` lets a test share or pre-build the store; by default each app gets its own.
    """
    app = Flask("chorus.sim")
    store = state or SimState(
        SimConfig(
            latency=settings.sim_latency,
            jitter=settings.sim_jitter,
            audio_seconds=settings.sim_audio_seconds,
        )
    )
    app.extensions[STATE_KEY] = store
    _register_protocol(app, store)
    _register_control(app, store)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        return _error(code, exc.description or _REASONS.get(code, "Error"))

    return app


def sim_state(app: Flask) -> SimState:
    """The store behind a simulator app (for tests and the server module)."""
    store = app.extensions[STATE_KEY]
    if not isinstance(store, SimState):
        raise TypeError(f"{app.name} is not a simulator app")
    return store


# -- the AIMLAPI protocol ---------------------------------------------------------------------


def _register_protocol(app: Flask, state: SimState) -> None:
    def record(
        at: float,
        kind: Kind,
        generation_id: str | None,
        resp: Response,
        auth: str | None,
        prompt: str | None = None,
    ) -> Response:
        state.record_request(
            at=at,
            method=request.method,
            # The API path is a constant; sharing one string keeps the record small.
            path=API_PATH if kind != "audio" else request.path,
            kind=kind,
            generation_id=generation_id,
            status_code=resp.status_code,
            auth=auth,
            prompt=prompt,
        )
        return resp

    @app.post(API_PATH)
    def submit() -> Response:
        at = state.clock()
        auth = _bearer()
        data = request.get_json(silent=True, force=True)
        prompt = data.get("prompt") if isinstance(data, dict) else None
        prompt = prompt if isinstance(prompt, str) else None
        fault = state.take_fault("submit")
        if fault is not None:
            # Infrastructure faults hit before the upstream looks at the request: nothing is made.
            resp = _apply_fault(fault)
            if resp is not None:
                return record(at, "submit", None, resp, auth, prompt)
        if auth is None:
            resp = _error(401, "Unauthorized: missing API key")
            return record(at, "submit", None, resp, auth, prompt)
        try:
            body = _parse_submit(data)
            markers = _parse_markers(body.prompt)
        except BadRequest as exc:
            return record(at, "submit", None, _error(400, str(exc)), auth, prompt)

        if "submit-5xx" in markers.flags:
            resp = _error(503, "Service unavailable")
            return record(at, "submit", None, resp, auth, prompt)
        if "submit-401" in markers.flags:
            resp = _error(401, "Unauthorized: invalid API key")
            return record(at, "submit", None, resp, auth, prompt)
        if "submit-429" in markers.flags:
            resp = _error(429, "Too Many Requests")
            resp.headers["Retry-After"] = "2"
            return record(at, "submit", None, resp, auth, prompt)

        gen = _new_generation(state, body, markers, auth, created_at=at)
        state.add_generation(gen)
        resp = _json({"id": gen.id, "status": "queued"}, 201)
        record(at, "submit", gen.id, resp, auth, prompt)
        if markers.submit_hang > 0:
            # The job already exists upstream; the slow answer provokes a client read timeout.
            time.sleep(markers.submit_hang)
        return resp

    @app.get(API_PATH)
    def poll() -> Response:
        at = state.clock()
        auth = _bearer()
        gen_id = request.args.get("generation_id") or None
        status_word: str | None = None
        fault = state.take_fault("poll")
        if fault is not None:
            resp = _apply_fault(fault)
            if resp is not None:
                if gen_id is not None:
                    state.count_poll(gen_id)
                return record(at, "poll", gen_id, resp, auth)
            status_word = fault.status_word
        if auth is None:
            return record(at, "poll", gen_id, _error(401, "Unauthorized: missing API key"), auth)
        if gen_id is None:
            msg = "Query validation error! generation_id: Required"
            return record(at, "poll", None, _error(400, msg), auth)

        known = state.get(gen_id)
        if known is not None and known.poll_hang > 0:
            time.sleep(known.poll_hang)
        # The status is taken after any hang: that is when the answer leaves.
        view = state.observe_poll(gen_id, state.clock(), reveals_status=status_word is None)
        if view is None:
            return record(at, "poll", gen_id, _error(404, "Generation not found"), auth)
        if view.garbage:
            resp = Response(GARBAGE_BODY, 200, mimetype="text/html")
            return record(at, "poll", gen_id, resp, auth)
        if view.poll_5xx:
            return record(at, "poll", gen_id, _error(502, "Bad Gateway"), auth)

        status = status_word or view.status
        audio_file = None
        if status == "completed":
            url = f"{request.host_url.rstrip('/')}{AUDIO_PREFIX}{quote(view.id, safe='')}.wav"
            audio_file = {"url": url}
        error = None
        if status == "error":
            error = {"name": view.error_name, "message": view.error_message}
        body = {"id": view.id, "status": status, "audio_file": audio_file, "error": error}
        return record(at, "poll", gen_id, _json(body, 200), auth)

    @app.get(AUDIO_PREFIX + "<path:name>")
    def audio(name: str) -> Response:
        at = state.clock()
        auth = _bearer()
        gen_id = name[: -len(".wav")] if name.endswith(".wav") else None
        gen = state.get(gen_id) if gen_id else None
        if gen is None or gen.status_at(at) != "completed":
            return record(at, "audio", gen_id, _error(404, "Audio not found"), auth)
        data = wav_bytes(frame_count(gen.audio_seconds, gen.sample_rate), gen.sample_rate)
        resp = Response(data, 200, mimetype="audio/wav")
        resp.headers["Content-Length"] = str(len(data))
        return record(at, "audio", gen_id, resp, auth)


def _new_generation(
    state: SimState, body: SubmitBody, markers: Markers, auth: str | None, created_at: float
) -> Generation:
    cfg = state.config
    if markers.latency is not None:
        latency = markers.latency
    else:
        latency = max(0.0, random.uniform(cfg.latency - cfg.jitter, cfg.latency + cfg.jitter))

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
    )


def _parse_submit(data: Any) -> SubmitBody:
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
                if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SAMPLE_RATES:
                    problems.append(
                        f"audio_setting.sample_rate: Expected one of {sorted(SAMPLE_RATES)}"
                    )
                else:
                    sample_rate = int(rate)
            bitrate = setting.get("bitrate")
            if bitrate is not None and (
                not isinstance(bitrate, int) or isinstance(bitrate, bool) or bitrate not in BITRATES
            ):
                problems.append(f"audio_setting.bitrate: Expected one of {sorted(BITRATES)}")
            fmt = setting.get("format")
            if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
                problems.append(f"audio_setting.format: Expected one of {sorted(FORMATS)}")
    if problems:
        raise BadRequest("Body validation error! " + "; ".join(problems))
    lyrics = data.get("lyrics")
    return SubmitBody(model=model, prompt=prompt, lyrics=lyrics, sample_rate=sample_rate)


def _parse_markers(prompt: str) -> Markers:
    """Read ``[sim:...]`` markers; an unknown one is a 400 so a typo in a test cannot pass silently."""
    flags: set[str] = set()
    seconds: dict[str, float] = {}
    for match in _MARKER.finditer(prompt):
        name, value = match.group(1), match.group(2)
        if name in _FLAG_MARKERS and value is None:
            flags.add(name)
        elif name in _SECONDS_MARKERS and value is not None:
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not number >= 0:  # also rejects NaN
                raise BadRequest(f"Body validation error! bad simulator marker {match.group(0)}")
            seconds[name] = number
        else:
            raise BadRequest(f"Body validation error! unknown simulator marker {match.group(0)}")
    return Markers(
        flags=frozenset(flags),
        submit_hang=seconds.get("submit-hang", 0.0),
        poll_hang=seconds.get("poll-hang", 0.0),
        latency=seconds.get("latency"),
    )


def _apply_fault(fault: Fault) -> Response | None:
    """Hang if asked, then the fault's own answer; None means "now answer normally"."""
    if fault.hang > 0:
        time.sleep(fault.hang)
    if fault.garbage:
        return Response(fault.body or GARBAGE_BODY, fault.status or 200, mimetype="text/html")
    if fault.status is not None:
        if fault.body is not None:
            resp = Response(fault.body, fault.status, mimetype="application/json")
        else:
            resp = _error(fault.status, _REASONS.get(fault.status, "Simulated fault"))
        resp.headers.update(fault.headers)
        return resp
    return None


def _bearer() -> str | None:
    """The API key from ``Authorization: Bearer <key>``, or None when absent or empty."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# -- the control API --------------------------------------------------------------------------


def _register_control(app: Flask, state: SimState) -> None:
    @app.get("/_sim/health")
    def health() -> Response:
        return _json({"ok": True}, 200)

    @app.route("/_sim/config", methods=["GET", "POST"])
    def config() -> Response:
        if request.method == "POST":
            data = request.get_json(silent=True, force=True)
            try:
                state.set_config(_parse_config(data, state.config))
            except BadRequest as exc:
                return _error(400, str(exc))
        return _json(state.config.as_dict(), 200)

    @app.route("/_sim/faults", methods=["GET", "POST", "DELETE"])
    def faults() -> Response:
        if request.method == "DELETE":
            state.clear_faults()
        elif request.method == "POST":
            data = request.get_json(silent=True, force=True)
            try:
                parsed = _parse_faults(data)
            except BadRequest as exc:
                return _error(400, str(exc))
            for target, items in parsed.items():
                state.add_faults(target, items)
        return _json(state.pending_faults(), 200)

    @app.post("/_sim/reset")
    def reset() -> Response:
        state.reset()
        return _json({"ok": True}, 200)

    @app.get("/_sim/record")
    def record() -> Response:
        if request.args.get("summary", "").lower() in {"1", "true", "yes"}:
            return _json(state.summary(), 200)
        try:
            since = int(request.args.get("since", "0"))
        except ValueError:
            return _error(400, "Query validation error! since: Expected integer")
        return _json(state.record(since=max(0, since)), 200)


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise BadRequest(f"{key}: Expected a number >= 0")
    return float(value)


def _parse_config(data: Any, current: SimConfig) -> SimConfig:
    """Apply a partial config update; omitted keys keep their current value."""
    if not isinstance(data, dict):
        raise BadRequest("Expected a JSON object")
    unknown = set(data) - {"latency", "jitter", "audio_seconds"}
    if unknown:
        raise BadRequest(f"Unknown config keys: {sorted(unknown)}")
    latency = _number(data, "latency") if "latency" in data else current.latency
    jitter = _number(data, "jitter") if "jitter" in data else current.jitter
    audio_seconds = current.audio_seconds
    if "audio_seconds" in data:
        audio_seconds = None if data["audio_seconds"] is None else _number(data, "audio_seconds")
    return SimConfig(latency=latency, jitter=jitter, audio_seconds=audio_seconds)


def _parse_faults(data: Any) -> dict[FaultTarget, list[Fault]]:
    """Validate every fault before queueing any, so a bad list changes nothing."""
    if not isinstance(data, dict) or set(data) - {"submit", "poll"}:
        raise BadRequest('Expected {"submit": [fault, ...], "poll": [fault, ...]}')
    out: dict[FaultTarget, list[Fault]] = {}
    targets: tuple[FaultTarget, ...] = ("submit", "poll")
    for target in targets:
        items = data.get(target, [])
        if not isinstance(items, list):
            raise BadRequest(f"{target}: Expected a list")
        out[target] = [_parse_fault(target, item) for item in items]
    return out


def _parse_fault(target: FaultTarget, item: Any) -> Fault:
    allowed = {"status", "body", "headers", "hang", "garbage", "status_word"}
    if not isinstance(item, dict) or not item or set(item) - allowed:
        raise BadRequest(f"{target}: each fault is an object with keys from {sorted(allowed)}")
    status = item.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise BadRequest(f"{target}: status must be an HTTP status code")
    body = item.get("body")
    if body is not None and not isinstance(body, str):
        raise BadRequest(f"{target}: body must be a string")
    headers = item.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise BadRequest(f"{target}: headers must map strings to strings")
    hang = _number(item, "hang") if "hang" in item else 0.0
    garbage = item.get("garbage", False)
    if not isinstance(garbage, bool):
        raise BadRequest(f"{target}: garbage must be a boolean")
    word = item.get("status_word")
    if word is not None:
        if target != "poll":
            raise BadRequest("status_word faults apply to polls only")
        if not isinstance(word, str) or not word:
            raise BadRequest("poll: status_word must be a non-empty string")
    if word is not None and (status is not None or garbage):
        raise BadRequest(f"{target}: status_word cannot be combined with status or garbage")
    return Fault(
        status=status,
        body=body,
        headers=dict(headers),
        hang=hang,
        garbage=garbage,
        status_word=word,
    )


# -- responses --------------------------------------------------------------------------------


def _json(body: Any, status: int) -> Response:
    # json.dumps directly: Flask's provider sorts keys, which costs time on the 10,000-row record.
    return Response(json.dumps(body, separators=(",", ":")), status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    """An error in AIMLAPI's shape: ``{message, path, requestId, statusCode, timestamp}``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {
        "message": message,
        "path": request.path,
        "requestId": str(uuid.uuid4()),
        "statusCode": status,
        "timestamp": now,
    }
    return _json(body, status)

"""MiniMax's synchronous ``POST /v1/music_generation``: one call, held open until the song exists.

With ``stream: true`` (hex output only) the answer is Server-Sent Events instead: the first
piece of audio after a quarter of the generation's time, the rest spread over what is left,
each ``data:`` a chunk ``{"data": {"audio": <hex piece>, "status": 1}}``; the last one has
``status`` 2, the whole audio and ``extra_info``. The pieces joined are the very file the
unstreamed answer carries.

Errors mostly arrive with HTTP 200 and a non-zero ``base_resp.status_code``; gateway errors
arrive as HTTP 4xx/5xx with ``{"type": "error", "error": {"type", "message", "http_code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response

from app.sim.aimlapi import BITRATES, FORMATS, is_int
from app.sim.audio import DEFAULT_SAMPLE_RATE, SAMPLE_RATES, frame_count, wav_bytes, wav_hex
from app.sim.calls import Call, marked_failure, submit_call
from app.sim.common import (
    REASONS,
    BadRequest,
    Markers,
    audio_url,
    garbage_response,
    json_response,
    make_generation,
    parse_markers,
    required_string,
)
from app.sim.data import Generation, fingerprint
from app.sim.minimax_options import check_options
from app.sim.state import SimState

MINIMAX_PATH = "/v1/music_generation"
OUTPUT_FORMATS = frozenset({"url", "hex"})
DEFAULT_BITRATE = 256000

MARKERS = frozenset(
    {
        "error",
        "moderated",
        "garbage",
        "submit-5xx",
        "submit-401",
        "submit-429",
        "audio-url-field",
        "submit-hang",
        "latency",
        "base-resp",
        "base-resp-once",
        "http",
        "stream-error",
        "stream-cut",
    }
)

# A streamed song arrives in pieces about this many seconds apart (at most STREAM_MAX_PIECES).
STREAM_PIECE_SECONDS = 1.0
STREAM_MAX_PIECES = 240
# The share of the generation's time before the first piece.
STREAM_FIRST_SHARE = 0.25

AUTH_MISSING = (
    "login fail: Please carry the API secret key in the 'Authorization' field of the request header"
)

# MiniMax's platform error table, plus the codes its CLI knows (1028, 1030, 2061).
BASE_RESP_MESSAGES = {
    1000: "unknown error",
    1001: "request timeout",
    1002: "rate limit exceeded",
    1004: "not authorized",
    1008: "insufficient balance",
    1024: "internal error",
    1026: "input new_sensitive",
    1027: "output new_sensitive",
    1028: "quota exhausted",
    1030: "quota exhausted",
    1033: "system error",
    1039: "token limit",
    1041: "conn limit",
    1042: "invisible character ratio limit",
    2013: "invalid params",
    2045: "rate growth limit",
    2049: "invalid api key",
    2056: "usage limit exceeded",
    2061: "model not available on the current plan",
}

# The gateway's ``error.type`` for each HTTP status (Anthropic-style names, as the CLI sees).
_GATEWAY_TYPES = {
    400: "bad_request_error",
    401: "authentication_error",
    402: "insufficient_balance_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "unprocessable_entity_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GATEWAY_MESSAGES = {
    402: "insufficient balance",
    422: "input new_sensitive: the input contains sensitive content (1026)",
    429: "rate limit exceeded",
}


@dataclass(frozen=True)
class MusicBody:
    model: str
    prompt: str
    lyrics: str | None
    output_format: str
    sample_rate: int
    bitrate: int
    options: dict[str, Any]
    stream: bool = False


def register(app: Flask, state: SimState) -> None:
    @app.post(MINIMAX_PATH)
    def music_generation() -> Response:
        call, data = submit_call(state, MINIMAX_PATH)
        # Every call counts against its key for as long as it is open, whatever it answers.
        open_call = state.call_opened("minimax", call.auth) if call.auth is not None else None
        closed = False

        def close() -> None:
            nonlocal closed
            if open_call is not None and not closed:
                closed = True
                state.call_closed(open_call)

        try:
            resp = _generate(state, call, data, close)
        except BaseException:
            close()
            raise
        if not resp.is_streamed:
            close()
        return resp


def _generate(state: SimState, call: Call, data: Any, close: Callable[[], None]) -> Response:
    """The answer; ``close`` ends the call's count (a stream calls it itself, see ``_stream``)."""
    faulted = call.submit_fault(gateway_error)
    if faulted is not None:
        return faulted
    if call.auth is None:
        return call.done(base_resp_error(1004, AUTH_MISSING))
    try:
        body = parse_body(data)
        markers = parse_markers(body.prompt, MARKERS)
    except BadRequest as exc:
        return call.done(base_resp_error(2013, f"invalid params, {exc}"))

    # Gateway failures answer at once and make nothing.
    failure = markers.http if markers.http is not None else marked_failure(markers)
    if failure is not None:
        return call.done(gateway_error(failure))

    gen, code = _new_generation(state, body, markers, call.auth, created_at=call.at)
    state.add_generation(gen)
    if body.stream and "garbage" not in markers.flags:
        return call.done(_stream(state, gen, body, markers, code, close), gen.id)
    # The call is held open while the song is made; no lock is held while sleeping.
    if gen.latency > 0:
        time.sleep(gen.latency)

    success = False
    if "garbage" in markers.flags:
        resp = garbage_response()
    elif code != 0:
        resp = base_resp_error(code, gen.error_message or BASE_RESP_MESSAGES.get(code, "error"))
    else:
        resp = json_response(_success_body(gen, body, markers), 200)
        success = True
    # A submit hang: the song exists (and is billed) but the answer is late.
    call.done_late(resp, gen.id, markers.submit_hang)
    if success:
        state.mark_completed_seen(gen.id, state.clock())
    return resp


def _new_generation(
    state: SimState, body: MusicBody, markers: Markers, auth: str, created_at: float
) -> tuple[Generation, int]:
    """The generation, and the base_resp code its answer will carry (0 for success)."""
    code = 0
    first = markers.base_resp_once is not None and not state.times_made(
        fingerprint(body.model, body.prompt, body.lyrics, auth, "minimax")
    )
    if markers.base_resp is not None:
        code = markers.base_resp
    elif first and markers.base_resp_once is not None:
        code = markers.base_resp_once
    elif "moderated" in markers.flags:
        code = 1026
    elif "error" in markers.flags:
        code = 1000
    gen = make_generation(
        state,
        markers,
        generation_id=uuid.uuid4().hex,
        protocol="minimax",
        model=body.model,
        prompt=body.prompt,
        lyrics=body.lyrics,
        auth=auth,
        account=auth,
        created_at=created_at,
        sample_rate=body.sample_rate,
        outcome="error" if code else "completed",
        error_name=f"base_resp {code}" if code else None,
        error_message=f"{BASE_RESP_MESSAGES.get(code, 'error')} (simulated)" if code else None,
    )
    gen.options = dict(body.options)
    return gen, code


def _success_body(gen: Generation, body: MusicBody, markers: Markers) -> dict[str, Any]:
    frames = frame_count(gen.audio_seconds, gen.sample_rate)
    size = len(wav_bytes(frames, gen.sample_rate))
    data: dict[str, Any]
    if body.output_format == "url":
        url = audio_url(gen.id)
        # Real clients disagree on where the link is; the marker moves it to audio_url.
        if "audio-url-field" in markers.flags:
            data = {"audio_url": url, "status": 2}
        else:
            data = {"audio": url, "status": 2}
    else:
        data = {"audio": wav_hex(frames, gen.sample_rate), "status": 2}
    return {
        "data": data,
        "trace_id": gen.id,
        "extra_info": {
            "music_duration": round(gen.audio_seconds * 1000),
            "music_sample_rate": gen.sample_rate,
            "music_channel": 1,
            "bitrate": body.bitrate,
            "music_size": size,
        },
        "analysis_info": None,
        "base_resp": {"status_code": 0, "status_msg": "success"},
    }


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _stream(
    state: SimState,
    gen: Generation,
    body: MusicBody,
    markers: Markers,
    code: int,
    close: Callable[[], None],
) -> Response:
    """The generation as Server-Sent Events, spread over its latency.

    A base_resp error is one event at the time the first piece would have come (nothing was
    made). ``[sim:stream-error]`` sends half the pieces then a base_resp 1000 event;
    ``[sim:stream-cut]`` sends half the pieces and closes without the final event.

    The call stops counting (``close``) just before its last event goes, or when the client
    leaves: a client that has read the last event may open its next call before this
    server's thread gets to finish the response.
    """
    audio = wav_bytes(frame_count(gen.audio_seconds, gen.sample_rate), gen.sample_rate)
    first = gen.latency * STREAM_FIRST_SHARE
    rest = gen.latency - first
    count = max(2, min(STREAM_MAX_PIECES, round(rest / STREAM_PIECE_SECONDS) + 1))
    size = -(-len(audio) // count)
    pieces = [audio[i : i + size] for i in range(0, len(audio), size)]
    final = _success_body(gen, body, markers)
    ok = {"status_code": 0, "status_msg": "success"}

    def events() -> Iterator[bytes]:
        try:
            yield from sent_events()
        finally:
            close()

    def sent_events() -> Iterator[bytes]:
        started = time.monotonic()

        def at(offset: float) -> None:
            time.sleep(max(0.0, started + offset - time.monotonic()))

        at(first)
        if code != 0:
            message = gen.error_message or BASE_RESP_MESSAGES.get(code, "error")
            close()
            yield _event(
                {"trace_id": gen.id, "base_resp": {"status_code": code, "status_msg": message}}
            )
            return
        broken = "stream-error" in markers.flags or "stream-cut" in markers.flags
        sent = pieces[: len(pieces) // 2] if broken else pieces
        for i, piece in enumerate(sent):
            at(first + rest * i / len(pieces))
            yield _event(
                {"data": {"audio": piece.hex(), "status": 1}, "trace_id": gen.id, "base_resp": ok}
            )
        if "stream-error" in markers.flags:
            error = {"status_code": 1000, "status_msg": "unknown error (simulated)"}
            close()
            yield _event({"trace_id": gen.id, "base_resp": error})
            return
        if "stream-cut" in markers.flags:
            return
        at(gen.latency + markers.submit_hang)
        state.mark_completed_seen(gen.id, state.clock())
        close()
        yield _event(final)

    resp = Response(events(), 200, mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


def parse_body(data: Any) -> MusicBody:
    """Validate a MiniMax music body (required fields, types, enums), or raise."""
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    problems: list[str] = []
    model = required_string(data, "model", "model is required", problems)
    prompt = required_string(data, "prompt", "prompt is required", problems)
    lyrics = data.get("lyrics")
    if lyrics is not None and not isinstance(lyrics, str):
        problems.append("lyrics must be a string")
    output_format = data.get("output_format", "hex")
    if output_format not in OUTPUT_FORMATS:
        problems.append(f"output_format must be one of {sorted(OUTPUT_FORMATS)}")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        problems.append("stream must be a boolean")
    elif stream and output_format != "hex":
        problems.append("stream=true requires output_format hex")

    sample_rate, bitrate = DEFAULT_SAMPLE_RATE, DEFAULT_BITRATE
    setting = data.get("audio_setting")
    if setting is not None:
        if not isinstance(setting, dict):
            problems.append("audio_setting must be an object")
        else:
            rate = setting.get("sample_rate", sample_rate)
            if not is_int(rate) or rate not in SAMPLE_RATES:
                problems.append(f"audio_setting.sample_rate must be one of {sorted(SAMPLE_RATES)}")
            else:
                sample_rate = int(rate)
            rate_bits = setting.get("bitrate", bitrate)
            if not is_int(rate_bits) or rate_bits not in BITRATES:
                problems.append(f"audio_setting.bitrate must be one of {sorted(BITRATES)}")
            else:
                bitrate = int(rate_bits)
            fmt = setting.get("format")
            if fmt is not None and fmt not in FORMATS:
                problems.append(f"audio_setting.format must be one of {sorted(FORMATS)}")
    options = check_options(data, model, prompt, problems)
    if problems:
        raise BadRequest("; ".join(problems))
    return MusicBody(
        model=model,
        prompt=prompt,
        lyrics=lyrics,
        output_format=str(output_format),
        sample_rate=sample_rate,
        bitrate=bitrate,
        options=options,
        stream=stream is True,
    )


def base_resp_error(code: int, message: str) -> Response:
    """MiniMax's usual failure: HTTP 200, no data, a non-zero ``base_resp``."""
    body = {"trace_id": uuid.uuid4().hex, "base_resp": {"status_code": code, "status_msg": message}}
    return json_response(body, 200)


def gateway_error(status: int, message: str | None = None) -> Response:
    """A gateway error: HTTP ``status`` with ``{"type": "error", "error": {...}}``."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    kind = _GATEWAY_TYPES.get(status, default)
    text = message or _GATEWAY_MESSAGES.get(status) or REASONS.get(status, "error")
    body = {"type": "error", "error": {"type": kind, "message": text, "http_code": status}}
    return json_response(body, status)

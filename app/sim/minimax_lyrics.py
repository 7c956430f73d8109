"""MiniMax's lyrics helper, ``POST /v1/lyrics_generation``: answered at once.

Body ``{mode: "write_full_song" | "edit", prompt?, lyrics? (required for edit), title?}``;
the answer carries ``song_title``, ``style_tags`` and ``lyrics`` at the top level, and
failures, as for music, a non-zero ``base_resp`` with HTTP 200 (sources:
../shared/research/providers.md §1.1).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Flask, Response

from app.sim.calls import Call, submit_call
from app.sim.common import BadRequest, garbage_response, json_response, parse_markers
from app.sim.minimax import AUTH_MISSING, BASE_RESP_MESSAGES, base_resp_error, gateway_error
from app.sim.state import SimState

LYRICS_PATH = "/v1/lyrics_generation"
MODES = ("write_full_song", "edit")
MARKERS = frozenset({"base-resp", "http", "latency", "garbage"})


def register(app: Flask, state: SimState) -> None:
    @app.post(LYRICS_PATH)
    def lyrics_generation() -> Response:
        call, data = submit_call(state, LYRICS_PATH)
        return _answer(call, data)


def _answer(call: Call, data: Any) -> Response:
    if call.auth is None:
        return call.done(base_resp_error(1004, AUTH_MISSING))
    try:
        mode, prompt, lyrics, title = parse_body(data)
        markers = parse_markers(prompt, MARKERS)
    except BadRequest as exc:
        return call.done(base_resp_error(2013, f"invalid params, {exc}"))
    if markers.http is not None:
        return call.done(gateway_error(markers.http))
    if markers.latency:
        time.sleep(markers.latency)
    if "garbage" in markers.flags:
        return call.done(garbage_response())
    if markers.base_resp is not None:
        code = markers.base_resp
        return call.done(base_resp_error(code, BASE_RESP_MESSAGES.get(code, "error")))
    theme = prompt.split("[sim:")[0].strip() or "a song"
    if mode == "edit":
        words = f"{lyrics.rstrip()}\n[Outro]\nAnd {theme}, once more"
    else:
        words = f"[Verse]\nA song about {theme}\n[Chorus]\n{theme}, {theme}\n[Outro]\nGoodbye"
    body = {
        "song_title": title or theme.title()[:60],
        "style_tags": "Pop, Upbeat",
        "lyrics": words,
        "trace_id": uuid.uuid4().hex,
        "base_resp": {"status_code": 0, "status_msg": "success"},
    }
    return call.done(json_response(body, 200))


def parse_body(data: Any) -> tuple[str, str, str, str | None]:
    """Mode, prompt, lyrics and title of a lyrics body, or ``BadRequest``."""
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    mode = data.get("mode")
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {list(MODES)}")
    values: dict[str, str] = {}
    for key in ("prompt", "lyrics", "title"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{key} must be a string")
        values[key] = value or ""
    if mode == "edit" and not values["lyrics"].strip():
        raise BadRequest("lyrics is required in edit mode")
    return mode, values["prompt"], values["lyrics"], values["title"] or None

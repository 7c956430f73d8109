"""Pieces every simulated protocol shares: prompt markers, latency, faults, JSON, auth, URLs,
and a new generation."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Response, request

from app.sim.audio import derive_duration, frame_count
from app.sim.data import Fault, Generation, Outcome, Protocol, SimConfig, fingerprint
from app.sim.state import SimState

AUDIO_PREFIX = "/_sim/audio/"
GARBAGE_BODY = "<html>oops</html>"

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service unavailable",
    504: "Generation timeout",
}

# Marker kinds: flags, a number of seconds, an integer code. Each protocol allows a subset.
_MARKER = re.compile(r"\[sim:([a-z0-9-]+)(?:=([^\]]*))?\]")
FLAG_MARKERS = frozenset(
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
        "audio-url-field",
        "moderated-prompt",
        "stream-error",
        "stream-cut",
    }
)
SECONDS_MARKERS = frozenset({"submit-hang", "poll-hang", "latency", "post-moderated"})
CODE_MARKERS = frozenset({"base-resp", "base-resp-once", "http"})

ErrorFactory = Callable[[int, str], Response]


class BadRequest(ValueError):
    """A request the simulator rejects; each protocol renders it in its own error shape."""


@dataclass(frozen=True)
class Markers:
    flags: frozenset[str]
    submit_hang: float = 0.0
    poll_hang: float = 0.0
    latency: float | None = None
    post_moderated: float | None = None
    base_resp: int | None = None
    # The code the first submit of this request answers; a later one (a resubmit) succeeds.
    base_resp_once: int | None = None
    http: int | None = None


def parse_markers(prompt: str, allowed: Collection[str]) -> Markers:
    """Read ``[sim:...]`` markers; an unknown one (or one this protocol has no use for) is an
    error, so a typo in a test cannot pass silently."""
    flags: set[str] = set()
    numbers: dict[str, float] = {}
    codes: dict[str, int] = {}
    for match in _MARKER.finditer(prompt):
        name, value = match.group(1), match.group(2)
        known = name in FLAG_MARKERS or name in SECONDS_MARKERS or name in CODE_MARKERS
        if not known:
            raise BadRequest(f"unknown simulator marker {match.group(0)}")
        if name not in allowed:
            raise BadRequest(f"simulator marker {match.group(0)} does not apply to this protocol")
        if name in FLAG_MARKERS and value is None:
            flags.add(name)
        elif name in SECONDS_MARKERS and value is not None:
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not number >= 0 or number == float("inf"):  # also rejects NaN
                raise BadRequest(f"bad simulator marker {match.group(0)}")
            numbers[name] = number
        elif name in CODE_MARKERS and value is not None:
            code = int(value) if value.isdigit() else -1
            if (name == "http" and not 400 <= code <= 599) or (name != "http" and code <= 0):
                raise BadRequest(f"bad simulator marker {match.group(0)}")
            codes[name] = code
        else:
            raise BadRequest(f"bad simulator marker {match.group(0)}")
    return Markers(
        flags=frozenset(flags),
        submit_hang=numbers.get("submit-hang", 0.0),
        poll_hang=numbers.get("poll-hang", 0.0),
        latency=numbers.get("latency"),
        post_moderated=numbers.get("post-moderated"),
        base_resp=codes.get("base-resp"),
        base_resp_once=codes.get("base-resp-once"),
        http=codes.get("http"),
    )


def required_string(data: dict[str, Any], key: str, problem: str, problems: list[str]) -> str:
    """``data[key]`` when it is a string that is not blank; else "", with ``problem`` noted."""
    value = data.get(key)
    if isinstance(value, str) and value.strip():
        return value
    problems.append(problem)
    return ""


def draw_latency(config: SimConfig, markers: Markers) -> float:
    """``[sim:latency=S]`` if given, else uniform in latency ± jitter, never below zero."""
    if markers.latency is not None:
        return markers.latency
    return max(0.0, random.uniform(config.latency - config.jitter, config.latency + config.jitter))


def apply_fault(fault: Fault, error: ErrorFactory) -> Response | None:
    """Hang if asked, then the fault's own answer; None means "now answer normally".

    ``error`` renders a status-only fault in the protocol's own error shape.
    """
    if fault.hang > 0:
        time.sleep(fault.hang)
    if fault.garbage:
        return Response(fault.body or GARBAGE_BODY, fault.status or 200, mimetype="text/html")
    if fault.status is not None:
        if fault.body is not None:
            resp = Response(fault.body, fault.status, mimetype="application/json")
        else:
            resp = error(fault.status, REASONS.get(fault.status, "Simulated fault"))
        resp.headers.update(fault.headers)
        return resp
    return None


def json_response(body: Any, status: int) -> Response:
    # json.dumps directly: Flask's provider sorts keys, which costs time on the 10,000-row record.
    return Response(json.dumps(body, separators=(",", ":")), status, mimetype="application/json")


def garbage_response() -> Response:
    return Response(GARBAGE_BODY, 200, mimetype="text/html")


def bearer() -> str | None:
    """The key from ``Authorization: Bearer <key>``, or None when absent or empty."""
    return bearer_of(request.headers.get("Authorization", ""))


def bearer_of(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def json_body() -> tuple[Any, str | None]:
    """The request's JSON (None if it is not JSON) and its ``prompt`` when that is a string."""
    data = request.get_json(silent=True, force=True)
    prompt = data.get("prompt") if isinstance(data, dict) else None
    return data, prompt if isinstance(prompt, str) else None


def audio_url(generation_id: str) -> str:
    """The absolute link, on this very server, to a generation's WAV file."""
    return audio_link(request.host_url, generation_id)


def audio_link(host_url: str, generation_id: str) -> str:
    return f"{host_url.rstrip('/')}{AUDIO_PREFIX}{quote(generation_id, safe='')}.wav"


def make_generation(
    state: SimState,
    markers: Markers,
    *,
    generation_id: str,
    protocol: Protocol,
    model: str,
    prompt: str,
    lyrics: str | None,
    auth: str | None,
    account: str | None,
    created_at: float,
    sample_rate: int,
    outcome: Outcome = "completed",
    error_name: str | None = None,
    error_message: str | None = None,
    title: str | None = None,
) -> Generation:
    """A generation made now: its latency drawn, its length from the lyrics, and the poll
    behaviour its prompt's markers ask for (a protocol allows only the markers it knows)."""
    cfg = state.config
    latency = draw_latency(cfg, markers)
    frames = frame_count(derive_duration(lyrics, cfg.audio_seconds), sample_rate)
    return Generation(
        id=generation_id,
        model=model,
        prompt=prompt,
        lyrics=lyrics,
        auth=auth,
        created_at=created_at,
        latency=latency,
        ready_at=None if outcome == "never" else created_at + latency,
        outcome=outcome,
        error_name=error_name,
        error_message=error_message,
        # What the WAV will really hold, after rounding to whole frames.
        audio_seconds=frames / sample_rate,
        sample_rate=sample_rate,
        fingerprint=fingerprint(model, prompt, lyrics, account, protocol),
        unknown_status="unknown-status" in markers.flags,
        garbage="garbage" in markers.flags,
        poll_5xx="poll-5xx" in markers.flags,
        poll_hang=markers.poll_hang,
        protocol=protocol,
        account=account,
        title=title,
        post_moderated=markers.post_moderated,
    )

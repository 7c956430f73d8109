"""The upstream simulator: one HTTP server that speaks three upstreams' music protocols.

Chorus's workers call it exactly as they call the real upstreams, so the whole system can be
tested and benchmarked offline. All three protocols share one app, port, store, config, record
and set of one-shot faults. Generations run on the simulator's clock: latency is drawn uniformly
in ``latency ± jitter`` (``POST /_sim/config``), or fixed per request by ``[sim:latency=S]``.

**AIMLAPI** (also Apilaplas), submit then poll:

* ``POST /v2/generate/audio`` → 201 ``{"id", "status": "queued"}``;
  ``GET /v2/generate/audio?generation_id=<id>`` → ``{"id", "status", "audio_file", "error"}``,
  status ``queued`` (first 10 % of the latency), ``generating``, then ``completed`` or ``error``.
* Errors are ``{message, path, requestId, statusCode, timestamp}``.
* Markers: ``[sim:error]`` / ``[sim:moderated]`` (ends in status ``error``),
  ``[sim:unknown-status]`` (``mystery-state`` while pending), ``[sim:garbage]`` (polls answer
  200 non-JSON), ``[sim:poll-5xx]`` (polls answer 502), ``[sim:poll-hang=S]``,
  ``[sim:submit-5xx]`` / ``[sim:submit-401]`` / ``[sim:submit-429]`` (answer at once, create
  nothing), ``[sim:submit-hang=S]`` (creates, then answers S s late), ``[sim:never]``,
  ``[sim:latency=S]``.

**MiniMax**, synchronous: ``POST /v1/music_generation``

* The call is held open for the generation's latency, then answers HTTP 200 ``{"data": {"audio":
  <hex WAV, or with output_format=url a link to /_sim/audio/<id>.wav>, "status": 2}, "trace_id",
  "extra_info": {music_duration (ms), music_sample_rate, music_channel, bitrate, music_size},
  "analysis_info": null, "base_resp": {"status_code": 0, "status_msg": "success"}}``. The
  generation's id is the ``trace_id``. ``stream: true`` is refused (2013): nothing streams.
* Errors come as HTTP 200 with a non-zero ``base_resp`` (no ``data``): 1004 without a key, 2013
  for a bad body. Gateway errors are HTTP 4xx/5xx ``{"type": "error", "error": {"type",
  "message", "http_code"}}``.
* Markers: ``[sim:base-resp=CODE]`` (that code after the latency), ``[sim:base-resp-once=CODE]``
  (likewise, but only for the first submit of the same request: a resubmit succeeds), ``[sim:error]`` (1000) and
  ``[sim:moderated]`` (1026) after the latency, ``[sim:http=CODE]`` / ``[sim:submit-5xx]`` (503) /
  ``[sim:submit-401]`` / ``[sim:submit-429]`` (gateway error at once, nothing created),
  ``[sim:garbage]`` (200 non-JSON after the latency), ``[sim:submit-hang=S]`` (the answer leaves
  S s after the latency; the song exists all along), ``[sim:audio-url-field]`` (with
  output_format=url the link is in ``data.audio_url`` and ``data.audio`` is absent),
  ``[sim:latency=S]``.

**useapi.net** MiniMax music, one song at a time per account:

* ``POST /v1/minimax/music/create`` (``prompt`` required; ``model``, ``title``, ``lyrics``,
  ``instrumental``, ``account``) → 200 ``{"musicId": "user:1-minimax:<account or
  default>-music:<n>", "status": 0, "statusLabel": "pending"}``; 429 "The previous request has
  not been completed yet…" while the account (bearer token, ``account`` or "") still runs a song.
* ``GET /v1/minimax/music/<musicId>`` (URL-encoded) → ``{"musicId", "title", "lyrics", "status",
  "statusLabel", "statusFinal", "audioURL", "duration", "createTime"}``, status 0 pending (first
  10 % of the latency), 1 processing, 2 completed, 4 moderated. Errors are ``{"error", "code"}``.
* Markers: ``[sim:moderated-prompt]`` (create answers 422 ``{"error": "Moderated prompt"}``,
  nothing created), ``[sim:moderated]`` (ends in 4, no audio), ``[sim:post-moderated=S]``
  (completes, then S s later flips to 4 and its audio link answers 404), ``[sim:unknown-status]``
  (status 3 while pending), ``[sim:never]``, ``[sim:garbage]``, ``[sim:poll-5xx]``,
  ``[sim:poll-hang=S]``, ``[sim:submit-5xx]``, ``[sim:submit-401]``, ``[sim:submit-429]``
  (a simulated busy answer), ``[sim:submit-hang=S]``, ``[sim:latency=S]``.
* ``DELETE /v1/minimax/scheduler/<musicId>`` (recorded as kind ``cancel``) → 204 while the song
  is being made, 404 ``Unable to locate running …`` otherwise. The song goes on: the account
  stays busy until it is made, as on useapi.net.

A marker that is unknown, malformed or of no use to the protocol is refused as a bad request
(400, or base_resp 2013 for MiniMax), so a typo in a test cannot pass silently.

**Control API** under ``/_sim``: ``health``; ``config`` (GET/POST latency, jitter,
audio_seconds); ``faults`` (one-shot faults for the next submit or poll of any protocol, shown
in that protocol's error shape); ``reset``; ``audio/<id>.wav`` (the songs); ``record``
(``?since=SEQ``, ``?summary=1``): requests, every generation with its ``protocol`` and
``account`` (the bearer key; for useapi ``"<token>|<account>"``), counts, and ``accounts``: per
(protocol, account) ``max_concurrent`` (peak open calls for MiniMax, peak generations running
otherwise), ``in_flight`` and ``rejected_busy`` (useapi 429s for a busy account).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from app.sim import aimlapi, minimax, minimax_lyrics, useapi
from app.sim.audio import frame_count, wav_bytes
from app.sim.calls import Call
from app.sim.common import AUDIO_PREFIX, REASONS, BadRequest, bearer, json_response
from app.sim.data import Fault, FaultTarget, SimConfig
from app.sim.state import SimState
from config.settings import Settings

__all__ = ["STATE_KEY", "SimState", "create_sim_app", "sim_state"]

API_PATH = aimlapi.API_PATH
STATE_KEY = "chorus_sim"


def create_sim_app(settings: Settings, *, state: SimState | None = None) -> Flask:
    """A plain Flask app serving the three protocols and the ``/_sim`` control API.

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
    app.wsgi_app = _QuickPolls(app.wsgi_app, store)  # type: ignore[method-assign]
    aimlapi.register(app, store)
    minimax.register(app, store)
    minimax_lyrics.register(app, store)
    useapi.register(app, store)
    _register_audio(app, store)
    _register_control(app, store)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Unknown routes and methods answer in the shape of the protocol the path belongs to.
        code = exc.code or 500
        if request.path.startswith((useapi.STATUS_PREFIX, useapi.SCHEDULER_PREFIX)):
            return useapi.error(code, "Not found." if code == 404 else None)
        if request.path == minimax.MINIMAX_PATH:
            return minimax.gateway_error(code)
        return aimlapi.error(code, exc.description or REASONS.get(code, "Error"))

    return app


class _QuickPolls:
    """WSGI middleware: plain AIMLAPI status GETs skip Flask (``aimlapi.quick_poll``)."""

    def __init__(self, app: Any, state: SimState) -> None:
        self.app = app
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") == API_PATH:
            body = aimlapi.quick_poll(self.state, environ)
            if body is not None:
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                start_response("200 OK", headers)
                return [body]
        return self.app(environ, start_response)


def sim_state(app: Flask) -> SimState:
    """The store behind a simulator app (for tests and the server module)."""
    store = app.extensions[STATE_KEY]
    if not isinstance(store, SimState):
        raise TypeError(f"{app.name} is not a simulator app")
    return store


def _register_audio(app: Flask, state: SimState) -> None:
    @app.get(AUDIO_PREFIX + "<path:name>")
    def audio(name: str) -> Response:
        gen_id = name[: -len(".wav")] if name.endswith(".wav") else None
        call = Call(state, "audio", request.path, state.clock(), bearer(), generation_id=gen_id)
        gen = state.get(gen_id) if gen_id else None
        if gen is None or not gen.audio_available(call.at):
            return call.done(aimlapi.error(404, "Audio not found"))
        data = wav_bytes(frame_count(gen.audio_seconds, gen.sample_rate), gen.sample_rate)
        resp = Response(data, 200, mimetype="audio/wav")
        resp.headers["Content-Length"] = str(len(data))
        return call.done(resp)


# -- the control API --------------------------------------------------------------------------


def _register_control(app: Flask, state: SimState) -> None:
    @app.get("/_sim/health")
    def health() -> Response:
        return json_response({"ok": True}, 200)

    @app.route("/_sim/config", methods=["GET", "POST"])
    def config() -> Response:
        if request.method == "POST":
            data = request.get_json(silent=True, force=True)
            try:
                state.set_config(_parse_config(data, state.config))
            except BadRequest as exc:
                return aimlapi.error(400, str(exc))
        return json_response(state.config.as_dict(), 200)

    @app.route("/_sim/faults", methods=["GET", "POST", "DELETE"])
    def faults() -> Response:
        if request.method == "DELETE":
            state.clear_faults()
        elif request.method == "POST":
            data = request.get_json(silent=True, force=True)
            try:
                parsed = _parse_faults(data)
            except BadRequest as exc:
                return aimlapi.error(400, str(exc))
            for target, items in parsed.items():
                state.add_faults(target, items)
        return json_response(state.pending_faults(), 200)

    @app.post("/_sim/reset")
    def reset() -> Response:
        state.reset()
        return json_response({"ok": True}, 200)

    @app.get("/_sim/record")
    def record() -> Response:
        if request.args.get("summary", "").lower() in {"1", "true", "yes"}:
            return json_response(state.summary(), 200)
        try:
            since = int(request.args.get("since", "0"))
        except ValueError:
            return aimlapi.error(400, "Query validation error! since: Expected integer")
        return json_response(state.record(since=max(0, since)), 200)


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

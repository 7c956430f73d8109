"""MiniMax's official music API: one blocking ``POST /v1/music_generation``.

Reference: https://platform.minimax.io/docs/api-reference/music-generation (request, the
synchronous answer) and https://platform.minimax.io/docs/api-reference/errorcode (the
``base_resp`` codes). The call holds the connection open until the song is made, so the
account's ``read_timeout`` is what bounds it. There is nothing to poll.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, NamedTuple

from app.http.retry_after import parse_retry_after
from app.http.sessions import Answer
from app.providers.base import (
    GenerationRequest,
    HTTPAdapter,
    OnAudio,
    PollResult,
    PollState,
    ProviderError,
    Submission,
)
from app.providers.minimax_stream import StreamReader

PATH = "/v1/music_generation"
# The lyrics helper: {mode, prompt?, lyrics?, title?} → song_title, style_tags, lyrics.
LYRICS_PATH = "/v1/lyrics_generation"

# data.status of a finished song. 1 ("still synthesising") only appears on streamed chunks
# (app.providers.minimax_stream reads those). A non-streamed answer with base_resp 0 and audio is final
# whatever its data.status says: there is nothing to poll.
STATUS_MAP: dict[str, PollState] = {"2": PollState.SUCCEEDED}


class Policy(NamedTuple):
    """What Chorus does with a ``base_resp.status_code``."""

    code: str  # the Chorus error code
    retry: bool  # another submit may succeed
    # The code may come after MiniMax did the work (a held call that then failed), and it may
    # have charged for it: a retry pays again, so it is counted in the job (upstream_attempts).
    billed: bool


# base_resp.status_code → Policy. Errors can arrive with HTTP 200, after a call held open for
# minutes. Sources (../shared/research/providers.md §1.6): the platform table
# https://platform.minimax.io/docs/api-reference/errorcode (its "suggested handling" decides
# ``retry``), the music schema's BaseResp (1002, 1004, 1008, 1026, 2013, 2049), and the official
# CLI (github.com/MiniMax-AI/cli, src/errors/api.ts) for 1028, 1030 and 2061.
# ``billed``: no source says which failures MiniMax charges for. A refusal of the request
# itself (rate, key, balance, quota, input, parameters) comes before any work and is taken as
# free; "unknown", "timeout", "internal" and "system" errors, and an output flagged after it was
# made, may follow the work and are taken as possibly billed. Any code not listed is
# ("upstream_failed", no retry, possibly billed).
BASE_RESP_CODES: dict[int, Policy] = {
    1000: Policy("upstream_unavailable", True, True),  # unknown error: retry later
    1001: Policy("upstream_unavailable", True, True),  # request timeout: retry later
    1024: Policy("upstream_unavailable", True, True),  # internal error: retry later
    1033: Policy("upstream_unavailable", True, True),  # system error / mysql failed
    1002: Policy("upstream_rate_limited", True, False),  # rate limit: back off
    1039: Policy("upstream_rate_limited", True, False),  # token limit
    1041: Policy("upstream_rate_limited", True, False),  # connection (concurrency) limit
    2045: Policy("upstream_rate_limited", True, False),  # rate growth limit
    1004: Policy("upstream_auth_failed", False, False),  # not authorised / token not match group
    2049: Policy("upstream_auth_failed", False, False),  # invalid API key
    1008: Policy("upstream_out_of_credits", False, False),  # insufficient balance
    1028: Policy("upstream_out_of_credits", False, False),  # quota exhausted (CLI)
    1030: Policy("upstream_out_of_credits", False, False),  # quota exhausted (CLI)
    2056: Policy("upstream_out_of_credits", False, False),  # usage limit (Token Plan window)
    1026: Policy("content_moderated", False, False),  # input flagged as sensitive
    1027: Policy("content_moderated", False, True),  # output flagged: the song was made
    1042: Policy("invalid_request", False, False),  # invisible character ratio limit
    2013: Policy("invalid_request", False, False),  # invalid params
    2061: Policy("invalid_request", False, False),  # model not on this plan (CLI)
}
UNKNOWN_BASE_RESP = Policy("upstream_failed", False, True)

# extra_info keys → audio_info keys. music_duration is in milliseconds, music_size in bytes.
AUDIO_INFO_KEYS = {
    "music_duration": "duration_ms",
    "music_sample_rate": "sample_rate",
    "music_channel": "channels",
    "bitrate": "bitrate",
    "music_size": "size",
}


class MinimaxAdapter(HTTPAdapter):
    provider: ClassVar[str] = "minimax"
    mode: ClassVar[str] = "sync"

    def submit(self, request: GenerationRequest) -> Submission:
        response = self.request("POST", PATH, json=self.payload(request))
        body = self.submit_body(response)
        self.check_base_resp(body, response)
        return self.parse_answer(body)

    def submit_streamed(self, request: GenerationRequest, on_audio: OnAudio) -> Submission:
        """With ``request.stream``: ask for Server-Sent Events (MiniMax streams hex output
        only) and hand each piece of audio to ``on_audio`` as it arrives. The account's read
        timeout bounds each read and, as it bounds a held call, the whole stream."""
        if not request.stream:
            return self.submit(request)
        started = time.monotonic()
        payload = {**self.payload(request), "stream": True, "output_format": "hex"}
        response = self.open_stream("POST", PATH, json=payload)
        try:
            if "event-stream" not in response.headers.get("Content-Type", ""):
                # A refusal (or an answer that did not stream) comes as one JSON body.
                answer = self._read(response, "POST")
                body = self.submit_body(answer)
                self.check_base_resp(body, answer)
                return self.parse_answer(body)
            # What an error chunk is judged with: the stream's status and headers.
            head = Answer("POST", response.url, response.status_code, response.headers, b"")
            reader = StreamReader(
                on_audio,
                check=lambda chunk: self.check_base_resp(chunk, head),
                audio_info=audio_info,
                deadline=started + self.account.read_timeout,
            )
            return reader.read(response)
        finally:
            response.close()

    def write_lyrics(
        self, mode: str, prompt: str | None, lyrics: str | None, title: str | None
    ) -> dict[str, str]:
        """MiniMax's lyrics helper: ``{"title", "style_tags", "lyrics"}``, or ProviderError
        (errors come as a ``base_resp`` with HTTP 200, as for music)."""
        body: dict[str, Any] = {"mode": mode}
        for key, value in (("prompt", prompt), ("lyrics", lyrics), ("title", title)):
            if value:
                body[key] = value
        response = self.request("POST", LYRICS_PATH, json=body)
        answer = self.submit_body(response)
        self.check_base_resp(answer, response)
        words = answer.get("lyrics")
        if not isinstance(words, str) or not words.strip():
            raise ProviderError(
                "upstream_invalid_result",
                f"MiniMax wrote no lyrics (trace_id {answer.get('trace_id')})",
                retryable=False,
                maybe_billed=True,
            )
        tags = answer.get("style_tags")
        if isinstance(tags, list):
            tags = ", ".join(str(t) for t in tags)
        title_ = answer.get("song_title")
        return {
            "title": title_ if isinstance(title_, str) else "",
            "style_tags": tags if isinstance(tags, str) else "",
            "lyrics": words,
        }

    def poll(self, generation_id: str) -> PollResult:
        # Only asked when a worker died after MiniMax answered but before the answer was
        # stored: the song exists upstream but cannot be fetched again.
        raise ProviderError(
            "upstream_unknown",
            "MiniMax answers synchronously; this job's answer was lost",
            retryable=False,
        )

    @staticmethod
    def payload(request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "prompt": request.prompt,
            "output_format": request.output_format,
            "stream": False,
        }
        if request.lyrics is not None:
            body["lyrics"] = request.lyrics
        if request.audio_setting:
            body["audio_setting"] = dict(request.audio_setting)
        if request.reference_audio_url:
            # music-cover's reference audio (a URL; MiniMax also takes audio_base64).
            body["audio_url"] = request.reference_audio_url
        # Only when asked for: the cover models refuse the flags even when false.
        if request.is_instrumental:
            body["is_instrumental"] = True
        if request.lyrics_optimizer:
            body["lyrics_optimizer"] = True
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    @staticmethod
    def check_base_resp(body: dict[str, Any], response: Answer) -> None:
        """Raise the mapped ProviderError when ``base_resp.status_code`` is not 0."""
        base_resp = body.get("base_resp")
        if not isinstance(base_resp, dict):
            return  # judged by the audio it carries, or lacks
        raw = base_resp.get("status_code")
        if raw is None or raw == 0:
            return
        code = _as_int(raw)
        if code == 0:
            return
        policy = (
            BASE_RESP_CODES.get(code, UNKNOWN_BASE_RESP) if code is not None else UNKNOWN_BASE_RESP
        )
        message = base_resp.get("status_msg") or "no message"
        raise ProviderError(
            policy.code,
            f"MiniMax base_resp {raw}: {message}",
            retryable=policy.retry,
            maybe_billed=policy.billed,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            status_code=response.status_code,
        )

    @staticmethod
    def parse_answer(body: dict[str, Any]) -> Submission:
        data = body.get("data")
        if not isinstance(data, dict):
            data = {}
        trace_id = body.get("trace_id")
        generation_id = trace_id if isinstance(trace_id, str) and trace_id else None
        status = data.get("status", body.get("status"))
        raw_status = str(status) if status is not None else None
        info = audio_info(body.get("extra_info"))

        # Some gateways answer flat (audio at the top level): accept both.
        audio_url = data.get("audio_url", body.get("audio_url"))
        audio = data.get("audio", body.get("audio"))
        url = next((u for u in (audio_url, audio) if _is_url(u)), None)
        if url is not None:
            return Submission(
                generation_id,
                PollResult(PollState.SUCCEEDED, raw_status, audio_url=url, audio_info=info),
            )

        def unusable(message: str) -> Submission:
            return Submission(
                generation_id, PollResult.unusable(raw_status, f"{message} (trace_id {trace_id})")
            )

        if not isinstance(audio, str) or not audio.strip():
            return unusable("MiniMax reported success without audio")
        try:
            audio_bytes = bytes.fromhex(audio)
        except ValueError:
            return unusable(f"MiniMax's audio is neither a URL nor hex: {audio[:40]!r}")
        if not audio_bytes:
            return unusable("MiniMax's audio is empty")
        return Submission(
            generation_id,
            PollResult(PollState.SUCCEEDED, raw_status, audio_bytes=audio_bytes, audio_info=info),
        )

    def http_error(self, response: Answer) -> ProviderError:
        error = super().http_error(response)
        status = response.status_code
        body = _json_or_none(response)
        obj = body.get("error") if body else None
        kind, text = "", ""
        if isinstance(obj, dict):
            # Newer gateway paths: {"type": "error", "error": {"type", "message", "http_code"}}
            kind = str(obj.get("type") or "error")
            text = str(obj.get("message") or "")
            error.message = f"HTTP {status} {kind}: {text or error.message}"
        if status >= 500 or status == 429 or status in (401, 403):
            return error  # retried / maybe_created / auth exactly as the base decides
        if status == 402 or kind == "insufficient_balance_error":
            error.code = "upstream_out_of_credits"
        elif status == 422 and ("sensitive" in text.lower() or "1026" in text):
            error.code = "content_moderated"
        elif body and isinstance(body.get("base_resp"), dict):
            # An older-style error body on a 4xx: its code is the more precise word.
            base_resp = body["base_resp"]
            code = _as_int(base_resp.get("status_code"))
            if code is not None and code in BASE_RESP_CODES:
                policy = BASE_RESP_CODES[code]
                error.code, error.retryable = policy.code, policy.retry
                error.maybe_billed = policy.billed
                message = base_resp.get("status_msg") or "no message"
                error.message = f"HTTP {status}, MiniMax base_resp {code}: {message}"
        return error


def audio_info(info: Any) -> dict[str, Any]:
    """``extra_info`` in Chorus's ``audio_info`` keys (what of it is there)."""
    if not isinstance(info, dict):
        return {}
    return {new: info[old] for old, new in AUDIO_INFO_KEYS.items() if info.get(old) is not None}


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _json_or_none(response: Answer) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None

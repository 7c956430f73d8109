"""MiniMax's official music API: one blocking ``POST /v1/music_generation``.

Reference: https://platform.minimax.io/docs/api-reference/music-generation (request, the
synchronous answer) and https://platform.minimax.io/docs/api-reference/errorcode (the
``base_resp`` codes). The call holds the connection open until the song is made, so the
account's ``read_timeout`` is what bounds it. There is nothing to poll.
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.http.retry_after import parse_retry_after
from app.http.sessions import Answer
from app.providers.base import (
    GenerationRequest,
    HTTPAdapter,
    PollResult,
    PollState,
    ProviderError,
    Submission,
)

PATH = "/v1/music_generation"

# data.status of a finished song. 1 ("still synthesising") only appears on streamed chunks,
# which Chorus never asks for. A non-streamed answer with base_resp 0 and audio is final
# whatever its data.status says: there is nothing to poll.
STATUS_MAP: dict[str, PollState] = {"2": PollState.SUCCEEDED}

# base_resp.status_code → (Chorus code, retryable). Errors can arrive with HTTP 200.
# https://platform.minimax.io/docs/api-reference/errorcode ; 1028/1030/2061 from the official
# CLI (github.com/MiniMax-AI/cli, src/errors/api.ts). Any other non-zero code is
# ("upstream_failed", False).
BASE_RESP_CODES: dict[int, tuple[str, bool]] = {
    1000: ("upstream_unavailable", True),  # unknown error
    1001: ("upstream_unavailable", True),  # request timeout
    1024: ("upstream_unavailable", True),  # internal error
    1033: ("upstream_unavailable", True),  # system error
    1002: ("upstream_rate_limited", True),  # rate limit
    1039: ("upstream_rate_limited", True),  # token limit
    1041: ("upstream_rate_limited", True),  # connection (concurrency) limit
    2045: ("upstream_rate_limited", True),  # rate growth limit
    1004: ("upstream_auth_failed", False),  # not authorised / token not match group
    2049: ("upstream_auth_failed", False),  # invalid API key
    1008: ("upstream_out_of_credits", False),  # insufficient balance
    1028: ("upstream_out_of_credits", False),  # quota exhausted
    1030: ("upstream_out_of_credits", False),  # quota exhausted
    2056: ("upstream_out_of_credits", False),  # usage limit (Token Plan 5-hour window)
    1026: ("content_moderated", False),  # input flagged as sensitive
    1027: ("content_moderated", False),  # output flagged as sensitive
    1042: ("invalid_request", False),  # invisible character ratio limit
    2013: ("invalid_request", False),  # invalid params
    2061: ("invalid_request", False),  # model not on this plan
}
UNKNOWN_BASE_RESP: tuple[str, bool] = ("upstream_failed", False)

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
        chorus_code, retryable = (
            BASE_RESP_CODES.get(code, UNKNOWN_BASE_RESP) if code is not None else UNKNOWN_BASE_RESP
        )
        message = base_resp.get("status_msg") or "no message"
        raise ProviderError(
            chorus_code,
            f"MiniMax base_resp {raw}: {message}",
            retryable=retryable,
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
        info = body.get("extra_info")
        audio_info = (
            {new: info[old] for old, new in AUDIO_INFO_KEYS.items() if info.get(old) is not None}
            if isinstance(info, dict)
            else {}
        )

        # Some gateways answer flat (audio at the top level): accept both.
        audio_url = data.get("audio_url", body.get("audio_url"))
        audio = data.get("audio", body.get("audio"))
        url = next((u for u in (audio_url, audio) if _is_url(u)), None)
        if url is not None:
            return Submission(
                generation_id,
                PollResult(PollState.SUCCEEDED, raw_status, audio_url=url, audio_info=audio_info),
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
            PollResult(
                PollState.SUCCEEDED, raw_status, audio_bytes=audio_bytes, audio_info=audio_info
            ),
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
                error.code, error.retryable = BASE_RESP_CODES[code]
                message = base_resp.get("status_msg") or "no message"
                error.message = f"HTTP {status}, MiniMax base_resp {code}: {message}"
        return error


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

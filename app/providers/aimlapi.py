"""AIMLAPI's music protocol: ``POST`` then ``GET /v2/generate/audio?generation_id=``.

Reference: https://docs.aimlapi.com/api-references/music-models/ (schemas
``universal-audio-fetch.json`` and the MiniMax music model files). Apilaplas serves the same
protocol under another base URL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.http.fanout import Get
from app.http.sessions import Answer
from app.providers.base import (
    GenerationRequest,
    HTTPAdapter,
    PollResult,
    PollState,
    ProviderError,
    Submission,
)

PATH = "/v2/generate/audio"

# Every music schema lists exactly queued | generating | completed | error. The docs' sample
# loops also wait on "waiting"; anything unknown is treated as still pending.
STATUS_MAP: dict[str, PollState] = {
    "queued": PollState.PENDING,
    "waiting": PollState.PENDING,
    "generating": PollState.PENDING,
    "completed": PollState.SUCCEEDED,
    "error": PollState.FAILED,
}

# Failure names that mean the upstream refused the content rather than broke.
MODERATION_NAMES = ("moderation", "sensitive", "content")


class AimlapiAdapter(HTTPAdapter):
    provider: ClassVar[str] = "aimlapi"

    def submit(self, request: GenerationRequest) -> Submission:
        response = self.request("POST", PATH, json=self.payload(request))
        body = self.submit_body(response)
        generation_id = body.get("id")
        if not isinstance(generation_id, str) or not generation_id:
            # The upstream answered success but gave no id to follow: it may hold a job we can
            # never find again, so this must not be retried as if nothing had happened.
            raise ProviderError(
                "upstream_invalid_response",
                f"no generation id in {body!r:.200}",
                retryable=False,
                maybe_created=True,
            )
        return Submission(generation_id=generation_id)

    def status_call(self, generation_id: str) -> Get:
        return Get(PATH, {"generation_id": generation_id})

    def parse_poll(self, response: Answer) -> PollResult:
        return self.parse_status(self.json_body(response))

    @staticmethod
    def payload(request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.upstream_model, "prompt": request.prompt}
        if request.lyrics:
            body["lyrics"] = request.lyrics
        if request.reference_audio_url:
            body["reference_audio_url"] = request.reference_audio_url
        # AIMLAPI's music-2.6 takes both flags; it has no seed (the catalog lets no model
        # routed here take one).
        if request.is_instrumental:
            body["is_instrumental"] = True
        if request.lyrics_optimizer:
            body["lyrics_optimizer"] = True
        if request.audio_setting:
            setting = dict(request.audio_setting)
            # Nor a channel: AIMLAPI's audio_setting has sample rate, bitrate and format.
            setting.pop("channel", None)
            # The docs renamed sample_rate to audio_sample_rate in April 2026 for 1.5/2.0/2.6
            # while music-cover kept sample_rate; which one the server reads is unverified,
            # so both are sent.
            if "sample_rate" in setting:
                setting.setdefault("audio_sample_rate", setting["sample_rate"])
            body["audio_setting"] = setting
        return body

    @staticmethod
    def parse_status(body: dict[str, Any]) -> PollResult:
        raw = body.get("status")
        if not isinstance(raw, str):
            raise ProviderError(
                "upstream_invalid_response", f"no status in {body!r:.200}", retryable=True
            )
        state = STATUS_MAP.get(raw.lower(), PollState.PENDING)
        if state is PollState.SUCCEEDED:
            audio = body.get("audio_file") or {}
            url = audio.get("url") if isinstance(audio, dict) else None
            return PollResult.completed(raw, url, "the upstream reported completion without audio")
        if state is PollState.FAILED:
            error = body.get("error")
            if not isinstance(error, dict):
                error = {}
            name = str(error.get("name") or "error")
            message = str(error.get("message") or "the upstream reported a failed generation")
            code = (
                "content_moderated"
                if any(m in name.lower() for m in MODERATION_NAMES)
                else "upstream_failed"
            )
            return PollResult(
                PollState.FAILED, raw, error_code=code, error_message=f"{name}: {message}"
            )
        return PollResult(PollState.PENDING, raw)

    def http_error(self, response: Answer) -> ProviderError:
        error = super().http_error(response)
        if response.status_code == 403:
            # AIMLAPI answers 403 "You've run out of credits": an account problem, not ours.
            error.code = "upstream_out_of_credits"
        return error

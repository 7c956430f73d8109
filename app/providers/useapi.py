"""useapi.net's MiniMax music (2026 API): ``POST /v1/minimax/music/create``, then
``GET /v1/minimax/music/{musicId}``.

References: https://useapi.net/blog/260817 (the JSON create call) and
https://useapi.net/docs/api-minimax-v1/get-minimax-music-musicId.html (status 0/1/2/4, 404).
The create answer's fields are not documented: Chorus reads ``musicId`` (or ``jobid``).
Each upstream web account makes one song at a time; a second create answers 429.

Cancel: ``DELETE /v1/minimax/scheduler/{id}``
(https://useapi.net/docs/api-minimax-v1/del-minimax-scheduler-videoId) takes a running
generation off useapi's scheduler. It is documented for video and image ids, and it does not
stop MiniMax: the web account stays busy until the song is made, so Chorus keeps the
account's slot until the status GET says the song ended. 404 means nothing is running under
that id.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

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

CREATE_PATH = "/v1/minimax/music/create"
MUSIC_PATH = "/v1/minimax/music/"
SCHEDULER_PATH = "/v1/minimax/scheduler/"
TITLE_LIMIT = 80

# GET /v1/minimax/music/{musicId} → status. Anything else is treated as still pending.
STATUS_MAP: dict[str, PollState] = {
    "0": PollState.PENDING,  # pending
    "1": PollState.PENDING,  # processing
    "2": PollState.SUCCEEDED,  # completed
    "4": PollState.FAILED,  # moderated (also after completion: the audioURL then fails)
}


class UseapiAdapter(HTTPAdapter):
    provider: ClassVar[str] = "useapi"
    # MiniMax may strike a finished song; its link then fails. Seen before Chorus holds a copy,
    # that is moderation, not a broken upstream (docs/upstreams.md).
    gone_audio_code: ClassVar[str] = "content_moderated"

    def submit(self, request: GenerationRequest) -> Submission:
        response = self.request("POST", CREATE_PATH, json=self.payload(request))
        body = self.submit_body(response)
        for key in ("musicId", "jobid"):
            music_id = body.get(key)
            if isinstance(music_id, str) and music_id:
                return Submission(generation_id=music_id)
        raise ProviderError(
            "upstream_invalid_response",
            f"no musicId in {body!r:.200}",
            retryable=False,
            maybe_created=True,
        )

    def status_call(self, generation_id: str) -> Get:
        # musicId looks like user:<id>-minimax:<account>-music:<id>: encode every ':' and '/'.
        return Get(MUSIC_PATH + quote(generation_id, safe=""))

    def parse_poll(self, response: Answer) -> PollResult:
        return self.parse_status(self.json_body(response))

    def cancel(self, generation_id: str) -> None:
        try:
            self.request("DELETE", SCHEDULER_PATH + quote(generation_id, safe=""))
        except ProviderError as exc:
            if exc.status_code != 404:
                raise
            # Nothing running under that id any more: there was nothing left to take off.

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, "model": request.upstream_model}
        if request.lyrics:
            body["lyrics"] = request.lyrics
        title = request.prompt.strip().split("\n", 1)[0].strip()[:TITLE_LIMIT]
        if title:
            body["title"] = title
        # Without it the model writes and sings its own words even when lyrics are empty;
        # Chorus asks for songs, so it is always false.
        body["instrumental"] = False
        if self.account.upstream_account:
            body["account"] = self.account.upstream_account
        return body

    @staticmethod
    def parse_status(body: dict[str, Any]) -> PollResult:
        status = body.get("status")
        if isinstance(status, bool) or not isinstance(status, int | str) or status == "":
            raise ProviderError(
                "upstream_invalid_response", f"no status in {body!r:.200}", retryable=True
            )
        raw = str(status)
        state = STATUS_MAP.get(raw.strip(), PollState.PENDING)
        if state is PollState.SUCCEEDED:
            missing = "useapi reported a completed song without an audioURL"
            return PollResult.completed(raw, body.get("audioURL"), missing)
        if state is PollState.FAILED:
            label = body.get("statusLabel")
            suffix = f", {label}" if isinstance(label, str) and label else ""
            return PollResult(
                PollState.FAILED,
                raw,
                error_code="content_moderated",
                error_message=f"MiniMax's moderation refused the song (useapi status {raw}{suffix})",
            )
        return PollResult(PollState.PENDING, raw)

    def http_error(self, response: Answer) -> ProviderError:
        error = super().http_error(response)
        status = response.status_code
        # useapi's {error, code} words when that is what came, else the base's snippet.
        detail = _error_text(response)
        if detail:
            error.message = f"HTTP {status}: {detail}"
        if status == 422:
            error.code = "content_moderated"
            error.message = f"useapi moderated the prompt: {error.message}"
        elif status == 429:
            error.message = f"the upstream account's one slot is busy: {error.message}"
        elif status == 404 and response.method == "GET":
            error.code = "upstream_failed"
            error.message = f"the upstream no longer knows this song: {error.message}"
        return error


def _error_text(response: Answer) -> str:
    """``error`` (and ``code``) of useapi's ``{error, code}`` bodies, if that is what came."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict) or not body.get("error"):
        return ""
    text = str(body["error"])[:300]
    code = body.get("code")
    return f"{text} (code {code})" if code is not None and str(code) != "" else text

"""The useapi.net adapter: POST /v1/minimax/music/create, GET /v1/minimax/music/{musicId}."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
import responses
from responses import matchers

from app.providers import get_adapter, useapi
from app.providers.base import AccountConfig, GenerationRequest, PollState
from app.providers.useapi import UseapiAdapter
from tests.unit.providers.adapter_contract import (
    GEN_ID,
    AdapterContract,
    RecordingSession,
    error_of,
)

BASE = "https://api.useapi.test"
CREATE = BASE + useapi.CREATE_PATH
KEY = "user:1234-abcdefghijklmnop"
MUSIC_ID = "user:1234-minimax:5678-music:349872652937216"
AUDIO = "https://cdn.hailuoai.video/music/349872652937216.mp3"


def music_url(music_id: str) -> str:
    return BASE + useapi.MUSIC_PATH + quote(music_id, safe="")


def song(status: Any, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "musicId": MUSIC_ID,
        "title": "Indie folk",
        "status": status,
        "statusLabel": {0: "pending", 1: "processing", 2: "completed", 4: "moderated"}.get(
            status, "?"
        ),
        "statusFinal": status in (2, 4),
        "duration": 140,
    }
    if status == 2:
        body["audioURL"] = AUDIO
    return {**body, **extra}


# ------------------------------------------------------------------ the shared contract


class TestUseapiContract(AdapterContract):
    adapter_cls = UseapiAdapter
    provider = "useapi"
    status_map = useapi.STATUS_MAP
    api_key = KEY

    def register(self, rsps: responses.RequestsMock, op: str, **response: Any) -> None:
        if op == "submit":
            rsps.add(responses.POST, self.base_url + useapi.CREATE_PATH, **response)
        else:
            url = self.base_url + useapi.MUSIC_PATH + quote(GEN_ID, safe="")
            rsps.add(responses.GET, url, **response)

    def status_body(self, raw_status: str) -> Any:
        return song(int(raw_status) if raw_status.isdigit() else raw_status)

    def submit_body(self) -> Any:
        return {"musicId": GEN_ID}


# ------------------------------------------------------------------ helpers


def account(**overrides: Any) -> AccountConfig:
    values: dict[str, Any] = {
        "id": "useapi-1",
        "provider": "useapi",
        "base_url": BASE,
        "api_key": KEY,
    }
    return AccountConfig(**{**values, **overrides})


@pytest.fixture
def adapter(session: RecordingSession) -> UseapiAdapter:
    return UseapiAdapter(account(), session=session)


def request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "upstream_model": "music-3.0",
        "prompt": "Indie folk, melancholic, acoustic guitar",
        "lyrics": "[Verse]\nStreetlights flicker",
    }
    return GenerationRequest(**{**values, **overrides})


def poll_with(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, body: Any, **kwargs: Any
) -> Any:
    rsps.add(responses.GET, music_url(MUSIC_ID), json=body, **kwargs)
    return adapter.poll(MUSIC_ID)


# ------------------------------------------------------------------ submit


def test_submit_sends_the_documented_body(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, json={"musicId": MUSIC_ID})
    submission = adapter.submit(request())
    assert submission.generation_id == MUSIC_ID
    assert submission.result is None

    sent = rsps.calls[0].request
    assert sent.method == "POST"
    assert sent.url == CREATE
    assert json.loads(sent.body or b"") == {
        "prompt": "Indie folk, melancholic, acoustic guitar",
        "model": "music-3.0",
        "lyrics": "[Verse]\nStreetlights flicker",
        "title": "Indie folk, melancholic, acoustic guitar",
        "instrumental": False,
    }
    # useapi's token is the whole "user:<id>-<token>", sent as the bearer.
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"


def test_submit_names_the_upstream_account_when_configured(rsps: responses.RequestsMock) -> None:
    rsps.add(
        responses.POST,
        CREATE,
        json={"musicId": MUSIC_ID},
        match=[matchers.json_params_matcher({"account": "5678"}, strict_match=False)],
    )
    UseapiAdapter(account(upstream_account="5678")).submit(request())


def test_submit_without_an_upstream_account_sends_none(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, json={"musicId": MUSIC_ID})
    adapter.submit(request())
    assert "account" not in json.loads(rsps.calls[0].request.body or b"")


def test_title_is_the_prompt_first_line_cut_to_80(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, json={"musicId": MUSIC_ID})
    prompt = "  " + "x" * 100 + "\nsecond line"
    adapter.submit(request(prompt=prompt, lyrics=None))
    body = json.loads(rsps.calls[0].request.body or b"")
    assert body["title"] == "x" * 80
    assert body["prompt"] == prompt
    assert "lyrics" not in body


def test_empty_prompt_sends_no_title(rsps: responses.RequestsMock, adapter: UseapiAdapter) -> None:
    rsps.add(
        responses.POST,
        CREATE,
        json={"musicId": MUSIC_ID},
        match=[
            matchers.json_params_matcher(
                {"prompt": "", "model": "music-3.0", "lyrics": "la", "instrumental": False},
                strict_match=True,
            )
        ],
    )
    adapter.submit(request(prompt="", lyrics="la"))


def test_jobid_is_accepted_when_there_is_no_music_id(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, json={"jobid": MUSIC_ID, "status": 0})
    assert adapter.submit(request()).generation_id == MUSIC_ID


@pytest.mark.parametrize(
    "body", [{}, {"musicId": ""}, {"musicId": None}, {"musicId": 42}, {"status": 0}]
)
def test_submit_answer_without_an_id_may_have_made_a_song(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, body: dict[str, Any]
) -> None:
    rsps.add(responses.POST, CREATE, json=body)
    error = error_of(lambda: adapter.submit(request()))
    assert error.code == "upstream_invalid_response"
    assert error.retryable is False
    assert error.maybe_created is True


@pytest.mark.parametrize(
    "kwargs",
    [{"body": "<html>OK</html>", "content_type": "text/html"}, {"json": [{"musicId": "m"}]}],
)
def test_unreadable_submit_answer_may_have_made_a_song(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, kwargs: dict[str, Any]
) -> None:
    rsps.add(responses.POST, CREATE, status=200, **kwargs)
    error = error_of(lambda: adapter.submit(request()))
    assert error.code == "upstream_invalid_response"
    assert (error.retryable, error.maybe_created) == (False, True)


# ------------------------------------------------------------------ submit errors

SUBMIT_ERRORS = [
    (400, {"error": "Parameter model is invalid", "code": 400}, "invalid_request", False),
    (401, {"error": "Unauthorized", "code": 401}, "upstream_auth_failed", False),
    (422, {"error": "Moderated prompt", "code": 422}, "content_moderated", False),
    (
        429,
        {"error": "The previous request has not been completed yet", "code": 429},
        "upstream_rate_limited",
        True,
    ),
    (500, {"error": "Internal error", "code": 500}, "upstream_unavailable", True),
    (503, {"error": "Service unavailable", "code": 503}, "upstream_unavailable", True),
]


@pytest.mark.parametrize(("status", "body", "code", "retryable"), SUBMIT_ERRORS)
def test_submit_errors(
    rsps: responses.RequestsMock,
    adapter: UseapiAdapter,
    status: int,
    body: dict[str, Any],
    code: str,
    retryable: bool,
) -> None:
    rsps.add(responses.POST, CREATE, status=status, json=body)
    error = error_of(lambda: adapter.submit(request()))
    assert (error.code, error.retryable) == (code, retryable)
    assert error.status_code == status
    assert error.maybe_created is False
    assert body["error"] in error.message  # the upstream's words are kept


def test_moderation_at_submit_says_so(rsps: responses.RequestsMock, adapter: UseapiAdapter) -> None:
    rsps.add(responses.POST, CREATE, status=422, json={"error": "Moderated prompt", "code": 422})
    error = error_of(lambda: adapter.submit(request()))
    assert error.code == "content_moderated"
    assert "moderated" in error.message.lower()


def test_429_is_the_busy_slot_and_keeps_retry_after(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(
        responses.POST,
        CREATE,
        status=429,
        json={"error": "The previous request has not been completed yet", "code": 429},
        headers={"Retry-After": "20"},
    )
    error = error_of(lambda: adapter.submit(request()))
    assert (error.code, error.retryable, error.retry_after) == ("upstream_rate_limited", True, 20)
    assert "slot is busy" in error.message
    assert "previous request has not been completed" in error.message


def test_error_bodies_that_are_not_useapi_shaped_are_kept(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, status=400, body="<html>Bad Request</html>")
    error = error_of(lambda: adapter.submit(request()))
    assert error.code == "invalid_request"
    assert "Bad Request" in error.message


def test_404_on_submit_is_an_invalid_request(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, status=404, json={"error": "Not found", "code": 404})
    error = error_of(lambda: adapter.submit(request()))
    assert (error.code, error.retryable) == ("invalid_request", False)


def test_read_timeout_on_submit_may_have_made_a_song(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.POST, CREATE, body=requests.ReadTimeout("read timed out"))
    error = error_of(lambda: adapter.submit(request()))
    assert (error.code, error.retryable, error.maybe_created) == ("upstream_timeout", True, True)


# ------------------------------------------------------------------ poll: the id


@pytest.mark.parametrize(
    "music_id", [MUSIC_ID, GEN_ID, "music:1/2?x=y#z", "plain-id_123", "sp ace+%"]
)
def test_poll_puts_the_id_url_encoded_in_the_path(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, music_id: str
) -> None:
    rsps.add(responses.GET, music_url(music_id), json=song(1))
    assert adapter.poll(music_id).state is PollState.PENDING

    sent = rsps.calls[0].request
    assert sent.method == "GET"
    assert sent.body is None
    parts = urlsplit(sent.url or "")
    assert parts.query == "" and parts.fragment == ""
    assert parts.path.startswith(useapi.MUSIC_PATH)
    encoded = parts.path.removeprefix(useapi.MUSIC_PATH)
    # One path segment: ':' and '/' (and '?', '#', ' ') never split or end the URL.
    assert encoded == quote(music_id, safe="")
    assert not set(":/?# ") & set(encoded)
    assert unquote(encoded) == music_id


def test_poll_url_of_a_real_music_id(rsps: responses.RequestsMock, adapter: UseapiAdapter) -> None:
    poll_with(rsps, adapter, song(0))
    assert rsps.calls[0].request.url == (
        BASE + "/v1/minimax/music/user%3A1234-minimax%3A5678-music%3A349872652937216"
    )


# ------------------------------------------------------------------ poll: status values


def test_status_map_is_the_documented_one() -> None:
    assert useapi.STATUS_MAP == {
        "0": PollState.PENDING,
        "1": PollState.PENDING,
        "2": PollState.SUCCEEDED,
        "4": PollState.FAILED,
    }


@pytest.mark.parametrize("status", [0, 1, "0", "1"])
def test_pending_and_processing(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, status: Any
) -> None:
    result = poll_with(rsps, adapter, song(status))
    assert result.state is PollState.PENDING
    assert result.raw_status == str(status)
    assert result.audio_url is None and result.error_code is None


@pytest.mark.parametrize("status", [2, "2"])
def test_completed_with_audio(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, status: Any
) -> None:
    result = poll_with(rsps, adapter, song(status, audioURL=AUDIO))
    assert result.state is PollState.SUCCEEDED
    assert result.raw_status == "2"
    assert result.audio_url == AUDIO
    assert result.error_code is None


@pytest.mark.parametrize("audio", ["missing", None, "", "ftp://x/y.mp3", "/rel.mp3", [AUDIO]])
def test_completed_without_audio_is_an_invalid_result(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, audio: Any
) -> None:
    body = song(2)
    if audio == "missing":
        del body["audioURL"]
    else:
        body["audioURL"] = audio
    result = poll_with(rsps, adapter, body)
    assert result.state is PollState.FAILED
    assert result.error_code == "upstream_invalid_result"
    assert result.error_message


@pytest.mark.parametrize("status", [4, "4"])
def test_status_4_is_moderation(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, status: Any
) -> None:
    # Even if a stale audioURL is still in the answer: the song was struck.
    result = poll_with(rsps, adapter, song(status, audioURL=AUDIO, statusLabel="moderated"))
    assert result.state is PollState.FAILED
    assert result.raw_status == "4"
    assert result.error_code == "content_moderated"
    assert result.error_message is not None
    assert "moderat" in result.error_message.lower()
    assert result.audio_url is None


@pytest.mark.parametrize("status", [3, 5, -1, 99, "queued", "failed"])
def test_unknown_status_values_are_pending(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, status: Any
) -> None:
    result = poll_with(rsps, adapter, song(status))
    assert result.state is PollState.PENDING
    assert result.raw_status == str(status)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"musicId": MUSIC_ID}},
        {"json": {"musicId": MUSIC_ID, "status": None}},
        {"json": {"musicId": MUSIC_ID, "status": True}},
        {"json": {"musicId": MUSIC_ID, "status": ""}},
        {"json": {"musicId": MUSIC_ID, "status": [2]}},
        {"json": [song(2)]},
        {"body": "<html>oops</html>", "content_type": "text/html"},
    ],
)
def test_unreadable_poll_answers_are_retryable(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, kwargs: dict[str, Any]
) -> None:
    rsps.add(responses.GET, music_url(MUSIC_ID), status=200, **kwargs)
    error = error_of(lambda: adapter.poll(MUSIC_ID))
    assert error.code == "upstream_invalid_response"
    assert error.retryable is True
    assert error.maybe_created is False


# ------------------------------------------------------------------ poll: errors


def test_404_on_poll_means_the_song_is_gone(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.GET, music_url(MUSIC_ID), status=404, json={"error": "Not found."})
    error = error_of(lambda: adapter.poll(MUSIC_ID))
    assert error.code == "upstream_failed"
    assert error.retryable is False
    assert error.status_code == 404
    assert "no longer knows this song" in error.message
    assert "Not found." in error.message


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "upstream_auth_failed", False),
        (429, "upstream_rate_limited", True),
        (500, "upstream_unavailable", True),
        (504, "upstream_unavailable", True),
    ],
)
def test_other_poll_errors(
    rsps: responses.RequestsMock,
    adapter: UseapiAdapter,
    status: int,
    code: str,
    retryable: bool,
) -> None:
    rsps.add(responses.GET, music_url(MUSIC_ID), status=status, json={"error": "e", "code": status})
    error = error_of(lambda: adapter.poll(MUSIC_ID))
    assert (error.code, error.retryable, error.maybe_created) == (code, retryable, False)


# ------------------------------------------------------------------ cancel


def scheduler_url(music_id: str) -> str:
    return BASE + useapi.SCHEDULER_PATH + quote(music_id, safe="")


def test_cancel_takes_the_song_off_useapis_scheduler(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(responses.DELETE, scheduler_url(MUSIC_ID), status=204)
    adapter.cancel(MUSIC_ID)
    sent = rsps.calls[0].request
    assert sent.method == "DELETE"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    # The id's ':' are encoded: it is one path segment.
    assert urlsplit(sent.url).path.endswith(quote(MUSIC_ID, safe=""))


def test_cancel_of_a_song_no_longer_running_is_not_an_error(
    rsps: responses.RequestsMock, adapter: UseapiAdapter
) -> None:
    rsps.add(
        responses.DELETE,
        scheduler_url(MUSIC_ID),
        status=404,
        json={"error": f"Unable to locate running {MUSIC_ID}"},
    )
    adapter.cancel(MUSIC_ID)


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_auth_failed"), (503, "upstream_unavailable")]
)
def test_cancel_reports_other_failures(
    rsps: responses.RequestsMock, adapter: UseapiAdapter, status: int, code: str
) -> None:
    rsps.add(responses.DELETE, scheduler_url(MUSIC_ID), status=status, json={"error": "e"})
    assert error_of(lambda: adapter.cancel(MUSIC_ID)).code == code


# ------------------------------------------------------------------ registry


def test_get_adapter_resolves_useapi() -> None:
    adapter = get_adapter(account())
    assert isinstance(adapter, UseapiAdapter)
    assert adapter.mode == "async"
    assert adapter.provider == "useapi"

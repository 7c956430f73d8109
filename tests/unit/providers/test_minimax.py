"""The MiniMax adapter: one blocking POST /v1/music_generation (providers.md §1)."""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from app.providers import get_adapter, minimax
from app.providers.base import (
    AccountConfig,
    GenerationRequest,
    PollState,
    Submission,
)
from app.providers.minimax import BASE_RESP_CODES, MinimaxAdapter
from app.sim.audio import wav_bytes
from tests.unit.providers.adapter_contract import AdapterContract, RecordingSession, error_of

BASE = "https://api.minimax.test"
URL = BASE + minimax.PATH
KEY = "sk-minimax-test"
AUDIO_URL = "https://minimax-algeng-chat-tts.oss-cn-wulanchabu.aliyuncs.com/music/x.mp3?Expires=1"
TRACE = "04ede0ab069fb1ba8be5156a24b1e081"
EXTRA_INFO = {
    "music_duration": 25364,
    "music_sample_rate": 44100,
    "music_channel": 2,
    "bitrate": 256000,
    "music_size": 813651,
}
AUDIO_INFO = {
    "duration_ms": 25364,
    "sample_rate": 44100,
    "channels": 2,
    "bitrate": 256000,
    "size": 813651,
}


def answer_body(
    *, audio: Any = AUDIO_URL, status: Any = 2, code: Any = 0, msg: str = "success", **data: Any
) -> dict[str, Any]:
    """The documented synchronous answer."""
    body_data: dict[str, Any] = {"status": status, **data}
    if audio is not None:
        body_data["audio"] = audio
    return {
        "data": body_data,
        "trace_id": TRACE,
        "extra_info": EXTRA_INFO,
        "analysis_info": None,
        "base_resp": {"status_code": code, "status_msg": msg},
    }


# ------------------------------------------------------------------ the shared contract


class TestMinimaxContract(AdapterContract):
    adapter_cls = MinimaxAdapter
    provider = "minimax"
    status_map = minimax.STATUS_MAP
    operations = ("submit",)
    status_operation = "submit"

    def register(self, rsps: responses.RequestsMock, op: str, **response: Any) -> None:
        assert op == "submit", op
        rsps.add(responses.POST, self.base_url + minimax.PATH, **response)

    def status_body(self, raw_status: str) -> Any:
        return answer_body(status=raw_status)

    def submit_body(self) -> Any:
        return answer_body()


# ------------------------------------------------------------------ helpers


def account(**overrides: Any) -> AccountConfig:
    values: dict[str, Any] = {
        "id": "minimax-1",
        "provider": "minimax",
        "base_url": BASE,
        "api_key": KEY,
        "read_timeout": 300.0,
    }
    return AccountConfig(**{**values, **overrides})


@pytest.fixture
def adapter(session: RecordingSession) -> MinimaxAdapter:
    return MinimaxAdapter(account(), session=session)


def request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "upstream_model": "music-2.6",
        "prompt": "Indie folk, melancholic",
        "lyrics": "[Verse]\nStreetlights flicker",
    }
    return GenerationRequest(**{**values, **overrides})


def submit_with(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, status: int = 200, **kwargs: Any
) -> Submission:
    rsps.add(responses.POST, URL, status=status, **kwargs)
    return adapter.submit(request())


# ------------------------------------------------------------------ the request


def test_submit_sends_the_documented_body(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, session: RecordingSession
) -> None:
    rsps.add(responses.POST, URL, json=answer_body())
    setting = {"sample_rate": 44100, "bitrate": 256000, "format": "mp3"}
    adapter.submit(request(output_format="hex", audio_setting=setting))

    sent = rsps.calls[0].request
    assert sent.method == "POST"
    assert sent.url == URL
    assert json.loads(sent.body or b"") == {
        "model": "music-2.6",
        "prompt": "Indie folk, melancholic",
        "lyrics": "[Verse]\nStreetlights flicker",
        "output_format": "hex",
        # As given: no AIMLAPI-style audio_sample_rate copy for MiniMax itself.
        "audio_setting": {"sample_rate": 44100, "bitrate": 256000, "format": "mp3"},
        "stream": False,
    }
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    # The long MiniMax read timeout bounds the blocking call.
    assert session.sent[0]["timeout"] == (5.0, 300.0)


def test_submit_leaves_out_what_was_not_asked_for(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    rsps.add(
        responses.POST,
        URL,
        json=answer_body(),
        match=[
            matchers.json_params_matcher(
                {"model": "music-2.6", "prompt": "p", "output_format": "url", "stream": False},
                strict_match=True,
            )
        ],
    )
    adapter.submit(GenerationRequest(upstream_model="music-2.6", prompt="p"))


def test_cover_reference_audio_is_sent_as_audio_url(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    rsps.add(responses.POST, URL, json=answer_body())
    adapter.submit(request(upstream_model="music-cover", reference_audio_url="https://x/ref.mp3"))
    assert json.loads(rsps.calls[0].request.body or b"")["audio_url"] == "https://x/ref.mp3"


# ------------------------------------------------------------------ success


def test_url_answer_in_data_audio(rsps: responses.RequestsMock, adapter: MinimaxAdapter) -> None:
    submission = submit_with(rsps, adapter, json=answer_body(audio=AUDIO_URL))
    assert submission.generation_id == TRACE
    result = submission.result
    assert result is not None
    assert result.state is PollState.SUCCEEDED
    assert result.raw_status == "2"
    assert result.audio_url == AUDIO_URL
    assert result.audio_bytes is None
    assert result.error_code is None


def test_url_answer_in_data_audio_url(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    # The official CLI reads data.audio_url; it wins over anything in data.audio.
    body = answer_body(audio="", audio_url=AUDIO_URL)
    result = submit_with(rsps, adapter, json=body).result
    assert result is not None and result.audio_url == AUDIO_URL


def test_audio_url_wins_over_hex(rsps: responses.RequestsMock, adapter: MinimaxAdapter) -> None:
    body = answer_body(audio="52494646", audio_url=AUDIO_URL)
    result = submit_with(rsps, adapter, json=body).result
    assert result is not None
    assert result.audio_url == AUDIO_URL and result.audio_bytes is None


@pytest.mark.parametrize("url", ["http://cdn.test/a.mp3", "https://cdn.test/a.mp3"])
def test_plain_http_urls_are_urls(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, url: str
) -> None:
    result = submit_with(rsps, adapter, json=answer_body(audio=url)).result
    assert result is not None and result.audio_url == url


def test_hex_answer_decodes_into_a_valid_wav(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    wav = wav_bytes(3200, 32000)
    submission = submit_with(rsps, adapter, json=answer_body(audio=wav.hex()))
    result = submission.result
    assert result is not None
    assert result.state is PollState.SUCCEEDED
    assert result.audio_url is None
    assert result.audio_bytes == wav
    with wave.open(io.BytesIO(result.audio_bytes)) as reader:
        assert reader.getframerate() == 32000
        assert reader.getnframes() == 3200
        assert reader.getnchannels() == 1


def test_uppercase_hex_decodes(rsps: responses.RequestsMock, adapter: MinimaxAdapter) -> None:
    wav = wav_bytes(100, 16000)
    result = submit_with(rsps, adapter, json=answer_body(audio=wav.hex().upper())).result
    assert result is not None and result.audio_bytes == wav


def test_extra_info_becomes_audio_info(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    result = submit_with(rsps, adapter, json=answer_body()).result
    assert result is not None
    assert result.audio_info == AUDIO_INFO


@pytest.mark.parametrize(
    ("extra_info", "expected"),
    [
        (None, {}),
        ("oops", {}),
        ({}, {}),
        ({"music_duration": 1000, "music_size": None}, {"duration_ms": 1000}),
    ],
)
def test_partial_or_missing_extra_info(
    rsps: responses.RequestsMock,
    adapter: MinimaxAdapter,
    extra_info: Any,
    expected: dict[str, Any],
) -> None:
    body = answer_body()
    body["extra_info"] = extra_info
    result = submit_with(rsps, adapter, json=body).result
    assert result is not None and result.audio_info == expected


def test_no_trace_id_means_no_generation_id(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    body = answer_body()
    del body["trace_id"]
    submission = submit_with(rsps, adapter, json=body)
    assert submission.generation_id is None
    assert submission.result is not None and submission.result.state is PollState.SUCCEEDED


def test_a_flat_answer_without_data_is_read_too(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    body = {"audio": AUDIO_URL, "status": 2, "trace_id": TRACE, "base_resp": {"status_code": 0}}
    result = submit_with(rsps, adapter, json=body).result
    assert result is not None and result.audio_url == AUDIO_URL


def test_the_answer_is_final_whatever_data_status_says(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    # Nothing would ever poll a sync job, so base_resp 0 with audio is the finished song.
    result = submit_with(rsps, adapter, json=answer_body(status=1)).result
    assert result is not None
    assert result.state is PollState.SUCCEEDED
    assert result.raw_status == "1"


# ------------------------------------------------------------------ no usable audio


@pytest.mark.parametrize(
    "data",
    [
        {"status": 2},
        {"status": 2, "audio": ""},
        {"status": 2, "audio": None},
        {"status": 2, "audio": 123},
        {"status": 2, "audio_url": "ftp://cdn/x.mp3"},
        "not an object",
        None,
    ],
)
def test_success_without_audio_is_an_invalid_result(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, data: Any
) -> None:
    body = answer_body()
    body["data"] = data
    result = submit_with(rsps, adapter, json=body).result
    # MiniMax made (and billed) something unusable: a final FAILED result, never a resubmit.
    assert result is not None and result.state is PollState.FAILED
    assert result.error_code == "upstream_invalid_result"


@pytest.mark.parametrize("audio", ["zz11", "abc", "ftp://cdn/x.mp3", "/relative/x.mp3", "  "])
def test_bad_hex_is_an_invalid_result(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, audio: str
) -> None:
    result = submit_with(rsps, adapter, json=answer_body(audio=audio)).result
    assert result is not None and result.state is PollState.FAILED
    assert result.error_code == "upstream_invalid_result"
    assert TRACE in (result.error_message or "")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": "<html>OK</html>", "content_type": "text/html"},
        {"body": ""},
        {"body": '{"data": {"audio": "5249'},
        {"json": [answer_body()]},
        {"json": "success"},
    ],
)
def test_garbage_200_may_have_made_the_song(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, kwargs: dict[str, Any]
) -> None:
    error = error_of(lambda: submit_with(rsps, adapter, **kwargs))
    assert error.code == "upstream_invalid_response"
    assert error.retryable is False
    assert error.maybe_created is True
    assert error.status_code == 200


# ------------------------------------------------------------------ base_resp on HTTP 200

# (Chorus code, retry, billed): a refusal of the request is free; an error that may follow
# the work MiniMax did (unknown, timeout, internal, system; an output flagged) may be billed.
EXPECTED_CODES: dict[int, tuple[str, bool, bool]] = {
    **dict.fromkeys((1000, 1001, 1024, 1033), ("upstream_unavailable", True, True)),
    **dict.fromkeys((1002, 1039, 1041, 2045), ("upstream_rate_limited", True, False)),
    **dict.fromkeys((1004, 2049), ("upstream_auth_failed", False, False)),
    **dict.fromkeys((1008, 1028, 1030, 2056), ("upstream_out_of_credits", False, False)),
    1026: ("content_moderated", False, False),
    1027: ("content_moderated", False, True),
    **dict.fromkeys((1042, 2013, 2061), ("invalid_request", False, False)),
}


def test_the_table_is_the_documented_one() -> None:
    assert BASE_RESP_CODES == EXPECTED_CODES


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_CODES.items()))
def test_every_base_resp_code_on_http_200(
    rsps: responses.RequestsMock,
    adapter: MinimaxAdapter,
    code: int,
    expected: tuple[str, bool, bool],
) -> None:
    # An error answer may still carry a data block: base_resp is checked first.
    body = answer_body(code=code, msg=f"message for {code}")
    error = error_of(lambda: submit_with(rsps, adapter, json=body))
    assert (error.code, error.retryable, error.maybe_billed) == expected
    assert error.maybe_created is False
    assert error.status_code == 200
    assert str(code) in error.message and f"message for {code}" in error.message


@pytest.mark.parametrize("code", [1003, 1013, 2000, 9999, -1, "2013x", "oops"])
def test_unknown_non_zero_codes_fail_without_retry(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, code: Any
) -> None:
    body = answer_body(audio=None, code=code, msg="something new")
    error = error_of(lambda: submit_with(rsps, adapter, json=body))
    assert error.code == "upstream_failed"
    assert error.retryable is False
    # Nothing says what an unknown code cost: it is counted as possibly billed.
    assert error.maybe_billed is True
    assert "something new" in error.message


def test_string_codes_are_read_as_numbers(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    body = answer_body(audio=None, code="1026", msg="input new_sensitive")
    error = error_of(lambda: submit_with(rsps, adapter, json=body))
    assert error.code == "content_moderated"


@pytest.mark.parametrize("code", [0, "0", None])
def test_zero_or_absent_code_is_success(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, code: Any
) -> None:
    result = submit_with(rsps, adapter, json=answer_body(code=code)).result
    assert result is not None and result.state is PollState.SUCCEEDED


def test_base_resp_rate_limit_keeps_retry_after(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    error = error_of(
        lambda: submit_with(
            rsps,
            adapter,
            json=answer_body(code=1002, msg="rate limit"),
            headers={"Retry-After": "9"},
        )
    )
    assert (error.code, error.retryable, error.retry_after) == ("upstream_rate_limited", True, 9)


def test_invalid_params_as_seen_on_the_cli_issue(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    # github.com/MiniMax-AI/cli/issues/159: "invalid params … (HTTP 200)", no data at all.
    body = {"base_resp": {"status_code": 2013, "status_msg": "invalid params, lyrics too long"}}
    error = error_of(lambda: submit_with(rsps, adapter, json=body))
    assert error.code == "invalid_request"
    assert error.retryable is False
    assert "lyrics too long" in error.message


# ------------------------------------------------------------------ HTTP errors


def error_object(kind: str, message: str, http_code: int) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "message": message, "http_code": str(http_code)},
    }


def gateway(
    status: int, kind: str, message: str, code: str, retryable: bool = False
) -> tuple[int, dict[str, Any], str, bool]:
    """A case of the gateway's error object: HTTP status, body, expected code and retryable."""
    return status, error_object(kind, message, status), code, retryable


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        gateway(401, "authentication_error", "invalid api key", "upstream_auth_failed"),
        gateway(403, "permission_error", "forbidden", "upstream_auth_failed"),
        gateway(402, "insufficient_balance_error", "balance low", "upstream_out_of_credits"),
        gateway(400, "insufficient_balance_error", "balance low", "upstream_out_of_credits"),
        (402, {"message": "Payment Required"}, "upstream_out_of_credits", False),
        gateway(
            422,
            "unprocessable_entity_error",
            "input contains sensitive content",
            "content_moderated",
        ),
        gateway(422, "unprocessable_entity_error", "new_sensitive (1026)", "content_moderated"),
        gateway(422, "unprocessable_entity_error", "lyrics required", "invalid_request"),
        gateway(400, "invalid_request_error", "bad model", "invalid_request"),
        gateway(404, "not_found_error", "no such route", "invalid_request"),
        gateway(429, "rate_limit_error", "slow down", "upstream_rate_limited", retryable=True),
        gateway(500, "api_error", "internal", "upstream_unavailable", retryable=True),
        gateway(529, "overloaded_error", "overloaded", "upstream_unavailable", retryable=True),
    ],
)
def test_gateway_error_objects(
    rsps: responses.RequestsMock,
    adapter: MinimaxAdapter,
    status: int,
    body: dict[str, Any],
    code: str,
    retryable: bool,
) -> None:
    error = error_of(lambda: submit_with(rsps, adapter, status=status, json=body))
    assert (error.code, error.retryable) == (code, retryable)
    assert error.status_code == status
    assert error.maybe_created is False
    if "error" in body:
        assert body["error"]["message"] in error.message


def test_error_object_type_is_in_the_message(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    body = error_object("invalid_request_error", "bad model", 400)
    error = error_of(lambda: submit_with(rsps, adapter, status=400, json=body))
    assert "invalid_request_error" in error.message and "HTTP 400" in error.message


def test_a_4xx_with_a_base_resp_uses_the_table(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    body = {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}}
    error = error_of(lambda: submit_with(rsps, adapter, status=400, json=body))
    assert (error.code, error.retryable) == ("upstream_out_of_credits", False)
    assert "insufficient balance" in error.message


def test_504_on_submit_may_have_made_the_song(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    error = error_of(lambda: submit_with(rsps, adapter, status=504, body="Gateway Timeout"))
    assert error.code == "upstream_unavailable"
    assert error.retryable is True
    assert error.maybe_created is True


def test_429_retry_after(rsps: responses.RequestsMock, adapter: MinimaxAdapter) -> None:
    error = error_of(
        lambda: submit_with(rsps, adapter, status=429, body="busy", headers={"Retry-After": "4"})
    )
    assert (error.code, error.retryable, error.retry_after) == ("upstream_rate_limited", True, 4)


# ------------------------------------------------------------------ transport, poll, registry


def test_read_timeout_on_submit_may_have_made_the_song(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    rsps.add(responses.POST, URL, body=requests.ReadTimeout("read timed out"))
    error = error_of(lambda: adapter.submit(request()))
    assert error.code == "upstream_timeout"
    assert error.maybe_created is True
    assert "300s" in error.message  # the account's long read timeout


def test_connect_timeout_made_nothing(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter
) -> None:
    rsps.add(responses.POST, URL, body=requests.ConnectTimeout("connect timed out"))
    error = error_of(lambda: adapter.submit(request()))
    assert (error.code, error.retryable, error.maybe_created) == (
        "upstream_unavailable",
        True,
        False,
    )


def test_poll_explains_that_the_answer_was_lost(adapter: MinimaxAdapter) -> None:
    error = error_of(lambda: adapter.poll(TRACE))
    assert error.code == "upstream_unknown"
    assert error.retryable is False
    assert "synchronously" in error.message


def test_get_adapter_resolves_minimax() -> None:
    adapter = get_adapter(account())
    assert isinstance(adapter, MinimaxAdapter)
    assert adapter.mode == "sync"
    assert adapter.timeout == (5.0, 300.0)


@pytest.mark.parametrize("status", [401, 429, 503])
def test_error_object_message_is_used_for_every_status(
    rsps: responses.RequestsMock, adapter: MinimaxAdapter, status: int
) -> None:
    body = error_object("some_error", f"words for {status}", status)
    error = error_of(lambda: submit_with(rsps, adapter, status=status, json=body))
    assert f"HTTP {status} some_error: words for {status}" == error.message

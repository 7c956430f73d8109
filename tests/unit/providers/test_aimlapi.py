"""The AIMLAPI adapter: POST then GET /v2/generate/audio?generation_id= (providers.md §2)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
import responses
from responses import matchers

from app.providers import ADAPTERS, aimlapi, get_adapter
from app.providers.aimlapi import AimlapiAdapter
from app.providers.base import (
    USER_AGENT,
    AccountConfig,
    Adapter,
    GenerationRequest,
    PollState,
    Submission,
)
from tests.sockets import free_port, hang_up_server, silent_server
from tests.unit.providers.adapter_contract import AdapterContract, RecordingSession, error_of

BASE = "https://api.aimlapi.test"
URL = BASE + aimlapi.PATH
KEY = "sk-aiml-test"
AUDIO = "https://cdn.aimlapi.com/generations/tts-20260423163856.mp3?Expires=1777019942"


# ------------------------------------------------------------------ the shared contract


class TestAimlapiContract(AdapterContract):
    adapter_cls = AimlapiAdapter
    provider = "aimlapi"
    status_map = aimlapi.STATUS_MAP

    def register(self, rsps: responses.RequestsMock, op: str, **response: Any) -> None:
        method = responses.POST if op == "submit" else responses.GET
        rsps.add(method, self.base_url + aimlapi.PATH, **response)

    def status_body(self, raw_status: str) -> Any:
        body: dict[str, Any] = {
            "id": "gen-1",
            "status": raw_status,
            "audio_file": None,
            "error": None,
        }
        if raw_status == "completed":
            body["audio_file"] = {"url": AUDIO}
        if raw_status == "error":
            body["error"] = {"name": "GenerationError", "message": "the partner failed"}
        return body


# ------------------------------------------------------------------ helpers


def account(**overrides: Any) -> AccountConfig:
    values: dict[str, Any] = {
        "id": "aiml-1",
        "provider": "aimlapi",
        "base_url": BASE,
        "api_key": KEY,
    }
    return AccountConfig(**{**values, **overrides})


@pytest.fixture
def adapter(session: RecordingSession) -> AimlapiAdapter:
    return AimlapiAdapter(account(), session=session)


def poll_with(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, body: Any, **kwargs: Any
) -> Any:
    rsps.add(responses.GET, URL, json=body, **kwargs)
    return adapter.poll("gen-1")


# ------------------------------------------------------------------ submit


def test_submit_sends_the_documented_body(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter
) -> None:
    rsps.add(responses.POST, URL, json={"id": "NDxdQ2xZY1L6PYQNkJgbA", "status": "queued"})
    request = GenerationRequest(
        upstream_model="minimax/music-2.6",
        prompt="Pop music, happy",
        lyrics="[Verse]\nWalking down the street",
        output_format="url",
        audio_setting={"sample_rate": 32000, "bitrate": 128000, "format": "wav"},
        reference_audio_url="https://example.com/ref.mp3",
    )
    submission = adapter.submit(request)

    assert submission == Submission(generation_id="NDxdQ2xZY1L6PYQNkJgbA")
    assert len(rsps.calls) == 1
    sent = rsps.calls[0].request
    assert sent.method == "POST"
    assert sent.url == URL
    assert json.loads(sent.body or b"") == {
        "model": "minimax/music-2.6",
        "prompt": "Pop music, happy",
        "lyrics": "[Verse]\nWalking down the street",
        "reference_audio_url": "https://example.com/ref.mp3",
        # Both keys: the docs renamed sample_rate to audio_sample_rate for some models only.
        "audio_setting": {
            "sample_rate": 32000,
            "audio_sample_rate": 32000,
            "bitrate": 128000,
            "format": "wav",
        },
    }
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["User-Agent"] == USER_AGENT
    # The caller's request is not modified by the payload's extra key.
    assert request.audio_setting == {"sample_rate": 32000, "bitrate": 128000, "format": "wav"}


def test_submit_leaves_out_what_was_not_asked_for(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter
) -> None:
    rsps.add(
        responses.POST,
        URL,
        json={"id": "g1", "status": "queued"},
        match=[
            matchers.json_params_matcher(
                {"model": "minimax-music", "prompt": "la"}, strict_match=True
            )
        ],
    )
    assert (
        adapter.submit(
            GenerationRequest(upstream_model="minimax-music", prompt="la", lyrics=None)
        ).generation_id
        == "g1"
    )


def test_audio_setting_without_sample_rate_is_sent_as_is() -> None:
    body = AimlapiAdapter.payload(
        GenerationRequest(upstream_model="m", prompt="p", audio_setting={"bitrate": 64000})
    )
    assert body["audio_setting"] == {"bitrate": 64000}


def test_no_api_key_sends_no_authorization(rsps: responses.RequestsMock) -> None:
    rsps.add(responses.POST, URL, json={"id": "g1"})
    AimlapiAdapter(account(api_key=None)).submit(GenerationRequest(upstream_model="m", prompt="p"))
    assert "Authorization" not in rsps.calls[0].request.headers


def test_base_url_with_a_trailing_slash(rsps: responses.RequestsMock) -> None:
    rsps.add(responses.POST, URL, json={"id": "g1"})
    AimlapiAdapter(account(base_url=BASE + "/")).submit(
        GenerationRequest(upstream_model="m", prompt="p")
    )
    assert rsps.calls[0].request.url == URL


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "queued"},
        {"id": ""},
        {"id": None},
        {"id": 123},
        {"id": ["g1"]},
    ],
)
def test_submit_answer_without_an_id_may_have_created_a_job(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, body: dict[str, Any]
) -> None:
    rsps.add(responses.POST, URL, json=body)
    error = error_of(lambda: adapter.submit(GenerationRequest(upstream_model="m", prompt="p")))
    assert error.code == "upstream_invalid_response"
    assert error.retryable is False
    assert error.maybe_created is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": "<html>OK</html>", "content_type": "text/html"},
        {"body": '{"id": "g1", "stat'},
        {"json": [{"id": "g1"}]},
    ],
)
def test_unreadable_submit_answer_may_have_created_a_job(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, kwargs: dict[str, Any]
) -> None:
    rsps.add(responses.POST, URL, status=200, **kwargs)
    error = error_of(lambda: adapter.submit(GenerationRequest(upstream_model="m", prompt="p")))
    assert error.code == "upstream_invalid_response"
    assert error.maybe_created is True
    assert error.retryable is False


# ------------------------------------------------------------------ poll: the id


@pytest.mark.parametrize(
    "generation_id",
    [
        "906aec79-1d2c-4f4e-9d55-0d2f7e1f6a11:minimax-music",
        "60ac7c34-0b1e-4c4e-8f7a-1c2d3e4f5a6b:elevenlabs/eleven_music",
        "NDxdQ2xZY1L6PYQNkJgbA",
        "odd id?&=#+%",
    ],
)
def test_poll_sends_the_id_url_encoded(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, generation_id: str
) -> None:
    rsps.add(
        responses.GET,
        URL,
        json={"id": generation_id, "status": "queued"},
        match=[matchers.query_param_matcher({"generation_id": generation_id})],
    )
    assert adapter.poll(generation_id).state is PollState.PENDING

    sent = urlsplit(rsps.calls[0].request.url or "")
    assert sent.path == aimlapi.PATH
    assert parse_qs(sent.query) == {"generation_id": [generation_id]}
    # ':' and '/' are percent-encoded inside the value, never left to split the URL.
    assert sent.query.startswith("generation_id=")
    encoded = sent.query.removeprefix("generation_id=")
    assert ":" not in encoded and "/" not in encoded and "?" not in encoded
    assert encoded.replace("+", "%20") == quote(generation_id, safe="")
    assert rsps.calls[0].request.method == "GET"
    assert rsps.calls[0].request.body is None


# ------------------------------------------------------------------ poll: status mapping


def test_status_map_is_the_documented_one() -> None:
    assert aimlapi.STATUS_MAP == {
        "queued": PollState.PENDING,
        "waiting": PollState.PENDING,  # only in the docs' sample loops
        "generating": PollState.PENDING,
        "completed": PollState.SUCCEEDED,
        "error": PollState.FAILED,
    }


@pytest.mark.parametrize("raw", ["queued", "waiting", "generating", "Generating", "QUEUED"])
def test_in_progress_words_are_pending(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, raw: str
) -> None:
    result = poll_with(rsps, adapter, {"id": "gen-1", "status": raw})
    assert result.state is PollState.PENDING
    assert result.raw_status == raw
    assert result.audio_url is None and result.error_code is None


@pytest.mark.parametrize("raw", ["processing", "failed", "succeeded", "done", ""])
def test_unknown_status_words_are_pending(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, raw: str
) -> None:
    # Not even "failed": AIMLAPI's schemas have no such word, so it is not trusted to mean
    # failure; the deadline ends a job that never leaves an unknown state.
    result = poll_with(rsps, adapter, {"id": "gen-1", "status": raw})
    assert result.state is PollState.PENDING
    assert result.raw_status == raw


@pytest.mark.parametrize("raw", ["completed", "COMPLETED"])
def test_completed_with_audio_succeeds(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, raw: str
) -> None:
    result = poll_with(
        rsps,
        adapter,
        {
            "id": "gen-1",
            "status": raw,
            "error": None,
            "audio_file": {"url": AUDIO, "content_type": "audio/mpeg", "file_size": 123},
            "meta": {"usage": {"credits_used": 1260}},
        },
    )
    assert result.state is PollState.SUCCEEDED
    assert result.audio_url == AUDIO
    assert result.raw_status == raw
    assert result.error_code is None


# An answer that ends the job, each with a detail absent or malformed ("missing": no key at all).
UNREADABLE_AUDIO = [
    "missing",
    None,
    {},
    {"url": None},
    {"url": ""},
    {"url": "ftp://cdn/x.mp3"},
    {"url": "/relative/x.mp3"},
    AUDIO,
    [AUDIO],
]
UNREADABLE_ERROR = ["missing", None, "boom", {}, {"message": None}]


@pytest.mark.parametrize(
    ("status", "field", "value", "code"),
    [("completed", "audio_file", v, "upstream_invalid_result") for v in UNREADABLE_AUDIO]
    + [("error", "error", v, "upstream_failed") for v in UNREADABLE_ERROR],
)
def test_an_end_without_its_details_still_fails_with_a_message(
    rsps: responses.RequestsMock,
    adapter: AimlapiAdapter,
    status: str,
    field: str,
    value: Any,
    code: str,
) -> None:
    """Completed without a usable audio URL, or an error without its name and message."""
    body: dict[str, Any] = {"id": "gen-1", "status": status}
    if value != "missing":
        body[field] = value
    result = poll_with(rsps, adapter, body)
    assert result.state is PollState.FAILED
    assert result.error_code == code
    assert result.error_message
    assert result.audio_url is None


def test_error_keeps_the_upstream_name_and_message(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter
) -> None:
    result = poll_with(
        rsps,
        adapter,
        {
            "id": "gen-1",
            "status": "error",
            "audio_file": None,
            "error": {"name": "GenerationError", "message": "Something wrong with the server"},
        },
    )
    assert result.state is PollState.FAILED
    assert result.error_code == "upstream_failed"
    assert result.raw_status == "error"
    assert result.error_message is not None
    assert "GenerationError" in result.error_message
    assert "Something wrong with the server" in result.error_message


@pytest.mark.parametrize(
    "name", ["ModerationError", "content_moderation", "SensitiveContent", "InputContentRejected"]
)
def test_error_named_for_moderation_is_content_moderated(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, name: str
) -> None:
    result = poll_with(
        rsps,
        adapter,
        {
            "id": "gen-1",
            "status": "error",
            "error": {"name": name, "message": "The lyrics were flagged"},
        },
    )
    assert result.state is PollState.FAILED
    assert result.error_code == "content_moderated"
    assert result.error_message is not None
    assert "The lyrics were flagged" in result.error_message


# ------------------------------------------------------------------ HTTP errors

CASES = [
    (400, "invalid_request", False),
    (401, "upstream_auth_failed", False),
    (403, "upstream_out_of_credits", False),
    (429, "upstream_rate_limited", True),
    (500, "upstream_unavailable", True),
    (502, "upstream_unavailable", True),
    (503, "upstream_unavailable", True),
    (504, "upstream_unavailable", True),
]
BODIES: dict[int, dict[str, Any]] = {
    400: {"message": "Body validation error! Expected string, received number"},
    401: {"message": "Invalid API key"},
    403: {"message": "You've run out of credits", "statusCode": 403},
    429: {"message": "Too Many Requests"},
    500: {"message": "The model is under maintenance"},
    502: {"message": "Bad gateway"},
    503: {"message": "Service unavailable"},
    504: {"message": "Generation timeout"},
}


@pytest.mark.parametrize("op", ["submit", "poll"])
@pytest.mark.parametrize(("status", "code", "retryable"), CASES)
def test_http_errors(
    rsps: responses.RequestsMock,
    adapter: AimlapiAdapter,
    op: str,
    status: int,
    code: str,
    retryable: bool,
) -> None:
    method = responses.POST if op == "submit" else responses.GET
    rsps.add(method, URL, status=status, json=BODIES[status])
    if op == "submit":
        error = error_of(lambda: adapter.submit(GenerationRequest(upstream_model="m", prompt="p")))
    else:
        error = error_of(lambda: adapter.poll("gen-1"))
    assert error.code == code
    assert error.retryable is retryable
    assert error.status_code == status
    assert error.maybe_created is (op == "submit" and status == 504)
    assert error.retry_after is None  # no Retry-After header was sent
    assert BODIES[status]["message"] in error.message  # the upstream's words are kept


def test_429_retry_after_seconds(rsps: responses.RequestsMock, adapter: AimlapiAdapter) -> None:
    rsps.add(
        responses.GET,
        URL,
        status=429,
        json={"message": "Too Many Requests"},
        headers={"Retry-After": "7"},
    )
    error = error_of(lambda: adapter.poll("gen-1"))
    assert error.code == "upstream_rate_limited"
    assert error.retryable is True
    assert error.retry_after == 7


def test_429_retry_after_http_date(rsps: responses.RequestsMock, adapter: AimlapiAdapter) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    rsps.add(responses.POST, URL, status=429, body="slow down", headers={"Retry-After": when})
    error = error_of(lambda: adapter.submit(GenerationRequest(upstream_model="m", prompt="p")))
    assert error.code == "upstream_rate_limited"
    assert error.retryable is True
    assert error.retry_after is not None
    assert 27 <= error.retry_after <= 31


def test_503_retry_after_is_kept(rsps: responses.RequestsMock, adapter: AimlapiAdapter) -> None:
    rsps.add(responses.GET, URL, status=503, body="busy", headers={"Retry-After": "12"})
    error = error_of(lambda: adapter.poll("gen-1"))
    assert (error.code, error.retryable, error.retry_after) == ("upstream_unavailable", True, 12)


def test_long_error_bodies_are_cut(rsps: responses.RequestsMock, adapter: AimlapiAdapter) -> None:
    rsps.add(responses.GET, URL, status=500, body="x" * 5000)
    error = error_of(lambda: adapter.poll("gen-1"))
    assert len(error.message) < 400
    assert error.message.endswith("…")


# ------------------------------------------------------------------ garbage answers


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": "<html><body>Gateway</body></html>", "content_type": "text/html"},
        {"body": ""},
        {"json": ["queued"]},
        {"json": "completed"},
        {"json": {"id": "gen-1"}},
        {"json": {"id": "gen-1", "status": None}},
        {"json": {"id": "gen-1", "status": 3}},
        {"json": {"id": "gen-1", "state": "completed"}},
    ],
)
def test_unreadable_poll_answers_are_retryable_invalid_responses(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, kwargs: dict[str, Any]
) -> None:
    rsps.add(responses.GET, URL, status=200, **kwargs)
    error = error_of(lambda: adapter.poll("gen-1"))
    assert error.code == "upstream_invalid_response"
    assert error.retryable is True
    assert error.maybe_created is False


# ------------------------------------------------------------------ transport faults


def submit(adapter: AimlapiAdapter) -> Any:
    return adapter.submit(GenerationRequest(upstream_model="m", prompt="p"))


@pytest.mark.parametrize(
    ("op", "fault", "code", "maybe_created"),
    [
        pytest.param(
            "submit",
            requests.ConnectTimeout("connect timed out"),
            "upstream_unavailable",
            False,
            id="connect-timeout-on-submit-created-nothing",
        ),
        pytest.param(
            "submit",
            requests.ReadTimeout("read timed out"),
            "upstream_timeout",
            True,
            id="read-timeout-on-submit-may-have-created-the-job",
        ),
        pytest.param(
            "poll",
            requests.ReadTimeout("read timed out"),
            "upstream_timeout",
            False,
            id="read-timeout-on-poll",
        ),
        pytest.param(
            "poll",
            requests.ConnectionError("('Connection aborted.', ConnectionResetError())"),
            "upstream_unavailable",
            False,
            id="a-reset-on-poll-is-never-maybe-created",
        ),
    ],
)
def test_timeouts_and_resets_are_retryable(
    rsps: responses.RequestsMock,
    adapter: AimlapiAdapter,
    op: str,
    fault: Exception,
    code: str,
    maybe_created: bool,
) -> None:
    rsps.add(responses.POST if op == "submit" else responses.GET, URL, body=fault)
    error = error_of(lambda: submit(adapter) if op == "submit" else adapter.poll("gen-1"))
    assert (error.code, error.retryable, error.maybe_created) == (code, True, maybe_created)
    if code == "upstream_timeout":
        assert "30s" in error.message  # the account's read timeout


@pytest.mark.parametrize(
    ("message", "maybe_created"),
    [
        (
            "HTTPSConnectionPool(host='api.aimlapi.com', port=443): Max retries exceeded "
            "(Caused by NewConnectionError('Failed to establish a new connection: "
            "[Errno 111] Connection refused'))",
            False,
        ),
        ("Failed to resolve 'api.aimlapi.com' ([Errno -2] Name or service not known)", False),
        (
            "('Connection aborted.', RemoteDisconnected('Remote end closed connection without "
            "response'))",
            True,
        ),
        ("('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))", True),
    ],
)
def test_connection_errors_on_submit(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter, message: str, maybe_created: bool
) -> None:
    rsps.add(responses.POST, URL, body=requests.ConnectionError(message))
    error = error_of(lambda: submit(adapter))
    assert error.code == "upstream_unavailable"
    assert error.retryable is True
    assert error.maybe_created is maybe_created


def test_other_request_errors_are_retryable(
    rsps: responses.RequestsMock, adapter: AimlapiAdapter
) -> None:
    rsps.add(responses.GET, URL, body=requests.exceptions.ChunkedEncodingError("cut short"))
    error = error_of(lambda: adapter.poll("gen-1"))
    assert error.code == "upstream_unavailable"
    assert error.retryable is True


# The same faults over real sockets, so the messages urllib3 really produces are classified.


def test_real_connection_refused_on_submit() -> None:
    adapter = AimlapiAdapter(account(base_url=f"http://127.0.0.1:{free_port()}"))
    error = error_of(lambda: submit(adapter))
    assert error.code == "upstream_unavailable"
    assert error.retryable is True
    assert error.maybe_created is False


@pytest.fixture(name="silent_server")
def _silent_server() -> Iterator[str]:
    with silent_server() as url:
        yield url


@pytest.mark.parametrize(("op", "maybe_created"), [("submit", True), ("poll", False)])
def test_real_read_timeout(silent_server: str, op: str, maybe_created: bool) -> None:
    adapter = AimlapiAdapter(account(base_url=silent_server, read_timeout=0.3))
    started = time.monotonic()
    error = error_of(lambda: submit(adapter) if op == "submit" else adapter.poll("gen-1"))
    assert time.monotonic() - started < 5
    assert error.code == "upstream_timeout"
    assert error.retryable is True
    assert error.maybe_created is maybe_created


@pytest.fixture(name="hang_up_server")
def _hang_up_server() -> Iterator[str]:
    with hang_up_server() as url:
        yield url


@pytest.mark.parametrize(("op", "maybe_created"), [("submit", True), ("poll", False)])
def test_real_hang_up_after_the_request_was_sent(
    hang_up_server: str, op: str, maybe_created: bool
) -> None:
    adapter = AimlapiAdapter(account(base_url=hang_up_server))
    error = error_of(lambda: submit(adapter) if op == "submit" else adapter.poll("gen-1"))
    assert error.code == "upstream_unavailable"
    assert error.retryable is True
    assert error.maybe_created is maybe_created
    # What urllib3 really says when the peer hangs up after reading the request.
    assert isinstance(error.__cause__, requests.ConnectionError)
    assert "aborted" in str(error.__cause__).lower()


# ------------------------------------------------------------------ timeouts


def test_every_call_carries_the_account_timeouts(
    rsps: responses.RequestsMock, session: RecordingSession
) -> None:
    adapter = AimlapiAdapter(account(connect_timeout=2.5, read_timeout=12.0), session=session)
    rsps.add(responses.POST, URL, json={"id": "g1"})
    rsps.add(responses.GET, URL, json={"status": "queued"})
    adapter.submit(GenerationRequest(upstream_model="m", prompt="p"))
    adapter.poll("g1")
    assert [(s["method"], s["timeout"]) for s in session.sent] == [
        ("POST", (2.5, 12.0)),
        ("GET", (2.5, 12.0)),
    ]
    timeouts = [c.request.req_kwargs["timeout"] for c in rsps.calls]  # type: ignore[attr-defined]
    assert timeouts == [(2.5, 12.0)] * 2


def test_default_timeouts_are_finite() -> None:
    adapter = AimlapiAdapter(AccountConfig(id="a", provider="aimlapi", base_url=BASE, api_key=None))
    assert adapter.timeout == (5.0, 30.0)


def test_the_adapter_makes_its_own_session_when_given_none() -> None:
    adapter = AimlapiAdapter(account())
    assert isinstance(adapter.session, requests.Session)
    assert adapter.session.headers["User-Agent"] == USER_AGENT


# ------------------------------------------------------------------ get_adapter


def test_get_adapter_resolves_aimlapi() -> None:
    acct = account()
    adapter = get_adapter(acct)
    assert isinstance(adapter, AimlapiAdapter)
    assert adapter.account is acct
    assert adapter.provider == "aimlapi"
    assert adapter.mode == "async"


@pytest.mark.parametrize("provider", ["nope", "", "AIMLAPI", "aimlapi "])
def test_get_adapter_rejects_an_unknown_provider(provider: str) -> None:
    with pytest.raises(LookupError, match="no adapter for provider"):
        get_adapter(account(provider=provider))


def test_every_registered_adapter_is_importable_and_named_for_its_provider() -> None:
    for provider in ADAPTERS:
        adapter = get_adapter(account(provider=provider))
        assert isinstance(adapter, Adapter)
        assert adapter.provider == provider

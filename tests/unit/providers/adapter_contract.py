"""Checks every upstream adapter must pass, whatever its protocol.

Use it by subclassing in a test module and filling in the hooks::

    class TestMinimaxContract(AdapterContract):
        adapter_cls = MinimaxAdapter
        provider = "minimax"
        status_map = minimax.STATUS_MAP

        def register(self, rsps, op, **response): ...   # mock the endpoint ``op`` calls
        def status_body(self, raw_status): ...           # a 200 body reporting raw_status

The class is not collected by itself (its name does not start with ``Test``). The checks:

* the status mapping is total: every word of the adapter's STATUS_MAP maps as the map says,
  and a word the adapter has never seen is PENDING (never an exception, never a failure);
  for a synchronous adapter (``mode = "sync"``) its answer is final instead: never PENDING,
  since nothing would ever poll it;
* a synchronous adapter has nothing to poll: ``poll`` raises a non-retryable ProviderError
  without calling the upstream;
* every HTTP error, transport fault and unreadable answer is a ProviderError with a code, and
  ``retryable`` says whether trying later can help;
* a submit that may have reached the upstream (read timeout, an unreadable 2xx) is flagged
  ``maybe_created``;
* every outbound call carries the account's (connect, read) timeout and its credentials;
* ``get_adapter`` resolves the provider name to the adapter class.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest
import requests
import responses

from app.providers import get_adapter
from app.providers.base import (
    AccountConfig,
    GenerationRequest,
    HTTPAdapter,
    PollResult,
    PollState,
    ProviderError,
)

GEN_ID = "906aec79-1d2c-4f4e-9d55-0d2f7e1f6a11:minimax/music-1.5"
UNKNOWN_STATUS = "reticulating-splines"
HTTP_ERRORS = (400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504)


class RecordingSession(requests.Session):
    """A real Session that remembers the keyword arguments of every ``request`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.sent.append({"method": method, "url": url, **kwargs})
        return super().request(method, url, *args, **kwargs)


def error_of(call: Any) -> ProviderError:
    """The ProviderError ``call()`` raises (it must raise one)."""
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


class AdapterContract:
    adapter_cls: ClassVar[type[HTTPAdapter]]
    provider: ClassVar[str]
    status_map: ClassVar[Mapping[str, PollState]]
    # The operations that talk to the upstream; a sync adapter has only "submit" (and sets
    # status_operation = "submit" and submit_body to a finished answer).
    operations: ClassVar[tuple[str, ...]] = ("submit", "poll")
    # The operation whose answer carries the upstream's status word.
    status_operation: ClassVar[str] = "poll"

    base_url: ClassVar[str] = "https://upstream.invalid/api"
    api_key: ClassVar[str] = "sk-contract-test"
    connect_timeout: ClassVar[float] = 3.5
    read_timeout: ClassVar[float] = 17.0

    # ------------------------------------------------------------------ hooks

    def register(self, rsps: responses.RequestsMock, op: str, **response: Any) -> None:
        """Mock the endpoint ``op`` calls; ``response`` goes to ``rsps.add`` (json, body, status...)."""
        raise NotImplementedError

    def status_body(self, raw_status: str) -> Any:
        """A 200 JSON body reporting ``raw_status``; successful ones carry the audio."""
        raise NotImplementedError

    def sample_request(self) -> GenerationRequest:
        return GenerationRequest(
            upstream_model="contract/model",
            prompt="Pop, happy",
            lyrics="[Verse]\nla la la",
            audio_setting={"sample_rate": 44100, "format": "mp3"},
        )

    def submit_body(self) -> Any:
        """A 200 body for a successful submit."""
        return {"id": GEN_ID, "status": "queued"}

    def call(self, adapter: HTTPAdapter, op: str) -> Any:
        if op == "submit":
            return adapter.submit(self.sample_request())
        if op == "poll":
            return adapter.poll(GEN_ID)
        raise AssertionError(f"unknown operation {op!r}")

    def read_status(self, adapter: HTTPAdapter) -> PollResult:
        result = self.call(adapter, self.status_operation)
        if isinstance(result, PollResult):
            return result
        assert result.result is not None, "a sync submit must return its result"
        return result.result

    # ------------------------------------------------------------------ fixtures

    def account(self) -> AccountConfig:
        return AccountConfig(
            id="contract-account",
            provider=self.provider,
            base_url=self.base_url,
            api_key=self.api_key,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

    @pytest.fixture
    def adapter(self, session: RecordingSession) -> HTTPAdapter:
        return self.adapter_cls(self.account(), session=session)

    @pytest.fixture
    def rsps(self) -> Iterator[responses.RequestsMock]:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield mock

    def answer(self, op: str, **response: Any) -> responses.RequestsMock:
        """A fresh mock (use as a context manager) answering ``op`` with ``response``.

        Read ``mock.calls`` inside the ``with``: leaving it forgets them.
        """
        mock = responses.RequestsMock(assert_all_requests_are_fired=True)
        self.register(mock, op, **response)
        return mock

    def fault(self, adapter: HTTPAdapter, op: str, **response: Any) -> ProviderError:
        with self.answer(op, **response), pytest.raises(ProviderError) as info:
            self.call(adapter, op)
        error = info.value
        assert isinstance(error.code, str) and error.code, error
        assert error.message, error
        return error

    # ------------------------------------------------------------------ checks

    def test_contract_status_map_is_total(self, adapter: HTTPAdapter) -> None:
        assert self.status_map, "an adapter must declare the status words it knows"
        for raw, expected in self.status_map.items():
            with self.answer(self.status_operation, json=self.status_body(raw)):
                result = self.read_status(adapter)
            assert result.state is expected, (raw, result)
            assert result.raw_status == raw
            if expected is PollState.SUCCEEDED:
                assert result.audio_url or result.audio_bytes, (raw, result)
                assert result.error_code is None
            elif expected is PollState.FAILED:
                assert result.error_code and result.error_message, (raw, result)
            else:
                assert result.error_code is None and result.audio_url is None

    def test_contract_unknown_status_is_pending(self, adapter: HTTPAdapter) -> None:
        assert UNKNOWN_STATUS not in self.status_map
        with self.answer(self.status_operation, json=self.status_body(UNKNOWN_STATUS)):
            result = self.read_status(adapter)
        assert result.raw_status == UNKNOWN_STATUS
        if adapter.mode == "sync":
            # Nothing will ever poll a synchronous answer: it must be final.
            assert result.state is not PollState.PENDING, result
        else:
            assert result.state is PollState.PENDING

    def test_contract_sync_poll_is_a_final_error_without_a_call(
        self, adapter: HTTPAdapter, session: RecordingSession
    ) -> None:
        if adapter.mode != "sync":
            pytest.skip("an async adapter polls its upstream")
        assert "poll" not in self.operations
        with (
            responses.RequestsMock(assert_all_requests_are_fired=False),
            pytest.raises(ProviderError) as info,
        ):
            adapter.poll(GEN_ID)
        assert info.value.code and info.value.message
        assert info.value.retryable is False
        assert session.sent == []

    def test_contract_http_errors_are_provider_errors(self, adapter: HTTPAdapter) -> None:
        for op in self.operations:
            for status in HTTP_ERRORS:
                error = self.fault(adapter, op, status=status, json={"message": f"nope {status}"})
                assert error.status_code == status, (op, status)
                assert error.retryable is (status == 429 or status >= 500), (op, status, error)
                # Only a gateway timeout on a submit may have left a job upstream.
                assert error.maybe_created is (op == "submit" and status == 504), (op, status)

    def test_contract_transport_faults_are_retryable_provider_errors(
        self, adapter: HTTPAdapter
    ) -> None:
        for op in self.operations:
            for exc in (
                requests.ConnectTimeout("connect timed out"),
                requests.ConnectionError("[Errno 111] Connection refused"),
                requests.ReadTimeout("read timed out"),
            ):
                error = self.fault(adapter, op, body=exc)
                assert error.retryable, (op, exc)
                assert isinstance(error.__cause__, requests.RequestException)
                # Nothing reached the upstream when the connection was never made.
                if not isinstance(exc, requests.ReadTimeout):
                    assert not error.maybe_created, (op, exc)

    def test_contract_submit_read_timeout_may_have_created_the_job(
        self, adapter: HTTPAdapter
    ) -> None:
        error = self.fault(adapter, "submit", body=requests.ReadTimeout("read timed out"))
        assert error.maybe_created

    def test_contract_unreadable_answers_are_provider_errors(self, adapter: HTTPAdapter) -> None:
        for op in self.operations:
            errors = [
                self.fault(adapter, op, status=200, body=body, content_type="text/html")
                for body in ("<html>502 Bad Gateway</html>", "", "{truncated")
            ]
            errors.append(self.fault(adapter, op, status=200, json=["not", "an", "object"]))
            if op == "submit":
                # A 2xx we cannot read may still have created (and billed) the job.
                for error in errors:
                    assert error.maybe_created and not error.retryable, error

    def test_contract_every_call_has_the_account_timeout(
        self, adapter: HTTPAdapter, session: RecordingSession
    ) -> None:
        bodies = {"submit": self.submit_body(), "poll": self.status_body(UNKNOWN_STATUS)}
        for op in self.operations:
            with self.answer(op, json=bodies[op]) as mock:
                self.call(adapter, op)
                assert len(mock.calls) == 1, op
                sent = mock.calls[0].request
            timeout = sent.req_kwargs["timeout"]  # type: ignore[attr-defined]
            assert timeout == (self.connect_timeout, self.read_timeout), op
        assert len(session.sent) == len(self.operations)
        for kwargs in session.sent:
            timeout = kwargs.get("timeout")
            assert timeout == (self.connect_timeout, self.read_timeout), kwargs
            assert all(isinstance(t, float) and t > 0 for t in timeout)

    def test_contract_every_call_is_authenticated(self, adapter: HTTPAdapter) -> None:
        bodies = {"submit": self.submit_body(), "poll": self.status_body(UNKNOWN_STATUS)}
        for op in self.operations:
            with self.answer(op, json=bodies[op]) as mock:
                self.call(adapter, op)
                headers = mock.calls[0].request.headers
            assert headers["Authorization"] == f"Bearer {self.api_key}", op
            assert headers["User-Agent"].startswith("Chorus/")

    def test_contract_submit_sends_json(self, adapter: HTTPAdapter) -> None:
        with self.answer("submit", json=self.submit_body()) as mock:
            self.call(adapter, "submit")
            request = mock.calls[0].request
        assert request.method == "POST"
        assert isinstance(json.loads(request.body or b"null"), dict)

    def test_contract_get_adapter_resolves_the_provider(self) -> None:
        adapter = get_adapter(self.account())
        assert type(adapter) is self.adapter_cls
        assert adapter.account == self.account()
        assert isinstance(adapter, HTTPAdapter)
        assert adapter.timeout == (self.connect_timeout, self.read_timeout)

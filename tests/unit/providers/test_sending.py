"""``Adapter.send``: its callback runs once the connection is open and before the request's
first byte leaves, over real sockets. A failure before it ran (no address, refused, a connect
timeout, a TLS handshake) reached nothing; one after it may have reached the upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import pytest
from pytest_httpserver import HTTPServer

from app.providers.aimlapi import AimlapiAdapter
from app.providers.base import AccountConfig, GenerationRequest, ProviderError
from tests.sockets import (
    Relay,
    address,
    closing_server,
    free_port,
    full_server,
    hang_up_server,
    refusing_server,
    silent_server,
)
from tests.unit.http.support import started, url
from tests.unit.providers.adapter_contract import RecordingSession, error_of

REQUEST = GenerationRequest(upstream_model="m", prompt="p")


def adapter_on(base_url: str, **timeouts: float) -> AimlapiAdapter:
    return AimlapiAdapter(
        AccountConfig(
            id="acct",
            provider="aimlapi",
            base_url=base_url,
            api_key="sk-test",
            connect_timeout=timeouts.get("connect", 2.0),
            read_timeout=timeouts.get("read", 0.5),
        )
    )


class Marks:
    """The callback: counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self) -> None:
        self.runs += 1


def unresolvable() -> AbstractContextManager[str]:
    # .invalid never resolves (RFC 6761).
    return nullcontext("http://chorus-upstream.invalid")


@pytest.mark.parametrize(
    "server",
    [refusing_server, unresolvable, full_server, closing_server],
    ids=["refused", "no-address", "connect-timeout", "tls-handshake"],
)
def test_a_failure_before_the_request_left_never_runs_the_callback(
    server: Callable[[], AbstractContextManager[str]],
) -> None:
    marks = Marks()
    with server() as base:
        adapter = adapter_on(base, connect=0.5)
        assert adapter.reports_sending
        error = error_of(lambda: adapter.send(REQUEST, marks))
    assert marks.runs == 0
    assert error.retryable is True


@pytest.mark.parametrize(
    "server", [hang_up_server, silent_server], ids=["hung-up-after-the-request", "no-answer"]
)
def test_a_failure_after_the_request_left_ran_the_callback_once(
    server: Callable[[], AbstractContextManager[str]],
) -> None:
    marks = Marks()
    with server() as base:
        error = error_of(lambda: adapter_on(base).send(REQUEST, marks))
    assert marks.runs == 1
    assert error.maybe_created is True


def test_a_raising_callback_stops_the_request_before_any_byte_leaves() -> None:
    seen: list[bytes] = []
    with hang_up_server() as base:
        relay = Relay(address(base), on_request=lambda data: bool(seen.append(data)) or True)
        try:
            adapter = adapter_on(f"http://127.0.0.1:{relay.port}")

            def withdrawn() -> None:
                raise LookupError("the job is not ours any more")

            with pytest.raises(LookupError):
                adapter.send(REQUEST, withdrawn)
        finally:
            relay.close()
    assert seen == []


def test_each_send_on_a_kept_connection_runs_the_callback_once() -> None:
    server: HTTPServer = started()
    try:
        server.expect_request("/v2/generate/audio", method="POST").respond_with_json(
            {"id": "gen-1", "status": "queued"}, status=201
        )
        adapter = adapter_on(url(server))
        marks = Marks()
        for _ in range(3):
            assert adapter.send(REQUEST, marks).generation_id == "gen-1"
        assert marks.runs == 3
        # A plain submit, with no send around it, runs nothing.
        assert adapter.submit(REQUEST).generation_id == "gen-1"
        assert marks.runs == 3
    finally:
        server.clear()
        server.stop()


def test_an_adapter_that_cannot_tell_runs_the_callback_before_submitting() -> None:
    # A session handed in (here a test's) has no connection hook: the callback runs first,
    # so a failure anywhere counts as possibly sent.
    adapter = AimlapiAdapter(
        AccountConfig(
            id="acct",
            provider="aimlapi",
            base_url=f"http://127.0.0.1:{free_port()}",
            api_key="sk-test",
        ),
        session=RecordingSession(),
    )
    assert not adapter.reports_sending
    marks = Marks()
    with pytest.raises(ProviderError):
        adapter.send(REQUEST, marks)
    assert marks.runs == 1

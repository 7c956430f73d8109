"""Batched status calls (``HTTPAdapter.poll_many`` over ``app.http.fanout``) on real sockets.

A batch must say, call by call, exactly what ``poll`` says for the same generation, and map
every transport fault the way ``request`` does. The simulator serves the protocol; small
servers of our own stage the faults (no mocks).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
import requests

from app.http.fanout import FanOut, Get, TransportError
from app.http.sessions import Answer
from app.providers.aimlapi import AimlapiAdapter
from app.providers.base import AccountConfig, PollResult, PollState, ProviderError
from app.providers.minimax import MinimaxAdapter
from app.providers.useapi import UseapiAdapter
from app.sim.server import start_background
from config.settings import load_settings
from tests.unit.http.keepalive import KeepAlive, keepalive_server, url_of

KEY = "sk-fanout"


def account(base_url: str, **overrides: Any) -> AccountConfig:
    values: dict[str, Any] = {
        "id": "acct",
        "provider": "aimlapi",
        "base_url": base_url,
        "api_key": KEY,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    values.update(overrides)
    return AccountConfig(**values)


@pytest.fixture
def sim() -> Iterator[str]:
    url, shutdown = start_background(load_settings({"SIM_LATENCY": "100", "SIM_JITTER": "0"}))
    yield url
    shutdown()


def created(sim: str, prompt: str) -> str:
    answer = requests.post(
        f"{sim}/v2/generate/audio",
        json={"model": "minimax/music-2.6", "prompt": prompt},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=5,
    )
    assert answer.status_code == 201
    gen_id: str = answer.json()["id"]
    return gen_id


def same(a: PollResult | ProviderError, b: PollResult | ProviderError) -> bool:
    if isinstance(a, ProviderError) and isinstance(b, ProviderError):
        return (a.code, a.retryable, a.status_code) == (b.code, b.retryable, b.status_code)
    return a == b


def polled_alone(adapter: AimlapiAdapter, generation_id: str) -> PollResult | ProviderError:
    try:
        return adapter.poll(generation_id)
    except ProviderError as exc:
        return exc


def test_a_batch_answers_as_polls_one_by_one(sim: str) -> None:
    ids = [
        created(sim, "done [sim:latency=0]"),
        created(sim, "busy"),
        created(sim, "broken [sim:latency=0] [sim:error]"),
        created(sim, "odd [sim:unknown-status]"),
        created(sim, "rubbish [sim:garbage]"),
        "no-such-generation",
    ]
    adapter = AimlapiAdapter(account(sim))
    assert adapter.polls_together
    together = adapter.poll_many(ids)
    alone = [polled_alone(adapter, g) for g in ids]

    assert all(same(a, b) for a, b in zip(together, alone, strict=True)), (together, alone)
    assert isinstance(together[0], PollResult) and together[0].state is PollState.SUCCEEDED
    assert together[0].audio_url and together[0].audio_url.startswith(sim)
    assert isinstance(together[1], PollResult) and together[1].state is PollState.PENDING
    assert isinstance(together[2], PollResult) and together[2].state is PollState.FAILED
    assert isinstance(together[4], ProviderError)
    assert together[4].code == "upstream_invalid_response" and together[4].retryable
    assert isinstance(together[5], ProviderError) and together[5].status_code == 404
    record = requests.get(f"{sim}/_sim/record", timeout=5).json()
    counts = {g["id"]: g["poll_count"] for g in record["generations"]}
    assert [counts[g] for g in ids[:5]] == [2] * 5  # once in the batch, once alone


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    with keepalive_server(
        lambda path: (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"id": path, "status": "generating"}).encode(),
        )
    ) as httpd:
        yield httpd


def test_connections_are_kept_and_one_the_upstream_closed_is_replaced(
    server: ThreadingHTTPServer,
) -> None:
    fanout = FanOut(url_of(server), headers={}, connect_timeout=2, read_timeout=5)
    calls = [Get("/status", {"id": str(n)}) for n in range(3)]
    answers = [r for _ in range(5) for r in fanout.get_many(calls)]
    assert all(isinstance(r, Answer) and r.status_code == 200 for r in answers)
    # Fifteen calls, never more than three at once: at most three connections, kept.
    assert 1 <= server.connections <= 3  # type: ignore[attr-defined]

    # The upstream drops each connection after its answer: the next batch finds them closed
    # and asks again on fresh ones, without an error.
    server.hang_up_after_answer = True  # type: ignore[attr-defined]
    fanout.get_many(calls)
    third = fanout.get_many(calls)
    assert all(isinstance(r, Answer) and r.status_code == 200 for r in third)
    assert [r.json()["id"] for r in third] == [  # type: ignore[union-attr]
        f"/status?id={n}" for n in range(3)
    ]


def test_a_kept_alive_connection_dropped_as_the_call_arrives_is_replaced(
    server: ThreadingHTTPServer,
) -> None:
    class AnswersOnce(KeepAlive):
        served = 0

        def do_GET(self) -> None:
            self.served += 1
            if self.served > 1:
                # Reads the next request on the kept-alive connection, then hangs up unanswered.
                self.close_connection = True
                return
            super().do_GET()

    server.RequestHandlerClass = AnswersOnce
    fanout = FanOut(url_of(server), headers={}, connect_timeout=2, read_timeout=5)
    for n in range(3):
        [answer] = fanout.get_many([Get("/status", {"id": str(n)})])
        assert isinstance(answer, Answer) and answer.status_code == 200
        assert answer.json()["id"] == f"/status?id={n}"
    assert server.connections == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "headers", "body", "code", "retry_after"),
    [
        (429, {"Retry-After": "2"}, b"slow down", "upstream_rate_limited", 2.0),
        (503, {}, b"busy", "upstream_unavailable", None),
        (401, {}, b"who are you", "upstream_auth_failed", None),
        (
            200,
            {"Content-Type": "text/html"},
            b"<html>oops</html>",
            "upstream_invalid_response",
            None,
        ),
        (200, {}, b'{"no": "status"}', "upstream_invalid_response", None),
    ],
)
def test_http_answers_map_as_a_single_poll_maps_them(
    server: ThreadingHTTPServer,
    status: int,
    headers: dict[str, str],
    body: bytes,
    code: str,
    retry_after: float | None,
) -> None:
    server.answer = lambda path: (status, headers, body)  # type: ignore[attr-defined]
    adapter = AimlapiAdapter(account(url_of(server)))
    together = adapter.poll_many(["a", "b"])
    alone = polled_alone(adapter, "a")
    for result in together:
        assert isinstance(result, ProviderError)
        assert same(result, alone)
        assert result.code == code and result.retry_after == retry_after
        assert result.maybe_created is False


def test_a_silent_upstream_times_the_batch_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        adapter = AimlapiAdapter(account(base, read_timeout=0.2))
        results = adapter.poll_many(["a", "b", "c"])
    for result in results:
        assert isinstance(result, ProviderError)
        assert result.code == "upstream_timeout" and result.retryable
        assert result.maybe_created is False


def test_a_refused_connection_is_a_retryable_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        adapter = AimlapiAdapter(account(f"http://127.0.0.1:{port}"))
        results = adapter.poll_many(["a", "b"])
    for result in results:
        assert isinstance(result, ProviderError)
        assert result.code == "upstream_unavailable" and result.retryable


def test_an_upstream_hanging_up_mid_batch_is_a_retryable_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(5)

        def hang_up() -> None:
            for _ in range(2):
                conn, _ = sock.accept()
                conn.recv(65536)
                conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        fanout = FanOut(
            f"http://127.0.0.1:{sock.getsockname()[1]}",
            headers={},
            connect_timeout=2,
            read_timeout=5,
        )
        results = fanout.get_many([Get("/a"), Get("/b")])
        thread.join(timeout=10)
    assert all(isinstance(r, TransportError) and r.kind == "broken" for r in results)


def test_the_batch_carries_the_credentials_and_the_query(server: ThreadingHTTPServer) -> None:
    seen: list[tuple[str, str]] = []
    handler_answer = server.answer  # type: ignore[attr-defined]

    class Recording(KeepAlive):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            super().do_GET()

    server.RequestHandlerClass = Recording
    server.answer = handler_answer  # type: ignore[attr-defined]
    adapter = AimlapiAdapter(account(url_of(server) + "/api/"))
    adapter.poll_many(["id with spaces/and:colons"])
    assert seen == [
        (
            "/api/v2/generate/audio?generation_id=id+with+spaces%2Fand%3Acolons",
            f"Bearer {KEY}",
        )
    ]


def test_who_polls_together() -> None:
    direct = "http://127.0.0.1:9"
    assert AimlapiAdapter(account(direct)).polls_together
    assert UseapiAdapter(account(direct, provider="useapi")).polls_together
    # No status call to batch: MiniMax answers synchronously.
    assert not MinimaxAdapter(account(direct, provider="minimax")).polls_together
    # A session handed in carries every call (a test's mock, say).
    assert not AimlapiAdapter(account(direct), session=requests.Session()).polls_together


def test_an_upstream_behind_a_proxy_is_polled_one_call_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    adapter = AimlapiAdapter(account("https://api.example.com"))
    assert adapter.session.proxies.get("https") == "http://proxy.internal:3128"
    assert not adapter.polls_together


def test_a_redirected_status_call_is_followed_as_a_single_poll_would(
    server: ThreadingHTTPServer,
) -> None:
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        if not path.startswith("/moved"):
            return 302, {"Location": "/moved" + path}, b""
        return 200, {"Content-Type": "application/json"}, b'{"status": "generating"}'

    server.answer = answer  # type: ignore[attr-defined]
    adapter = AimlapiAdapter(account(url_of(server)))
    assert adapter.poll_many(["a", "b"]) == [PollResult(PollState.PENDING, "generating")] * 2

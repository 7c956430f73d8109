"""``chorus_client.Client`` against a real Chorus: web, worker, scheduler and simulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from chorus_client import (
    AuthenticationError,
    Client,
    Conflict,
    InsufficientBalance,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFoundError,
    Unavailable,
    WaitTimeout,
)
from tests.client.conftest import Chorus
from tests.conftest import GOOD_BODY

pytestmark = pytest.mark.e2e

MODEL, PROMPT, LYRICS = GOOD_BODY["model"], GOOD_BODY["prompt"], GOOD_BODY["lyrics"]
SLOW = "[sim:latency=30] a slow ambient drone"


def test_generate_with_wait_returns_the_succeeded_job(chorus: Chorus, tmp_path: Path) -> None:
    client = chorus.client("waits")
    began = time.monotonic()
    job = client.generate(MODEL, PROMPT, LYRICS, wait=60, metadata={"ref": "a-1"})
    assert job["status"] == "SUCCEEDED", job
    assert time.monotonic() - began < 60
    assert job["metadata"] == {"ref": "a-1"}
    assert job["cost"]["state"] == "captured"

    # The same bytes as the job's signed link (read with no key), by job and by id.
    size = job["audio_info"]["size"]
    expected = requests.get(job["audio"], timeout=30).content
    assert len(expected) == size > 1000
    by_job = client.download(job, tmp_path / "track.wav")
    by_id = client.download(job["id"], tmp_path / "again.wav")
    assert by_job.read_bytes() == expected == by_id.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.wav", "track.wav"]


def test_events_follow_a_job_to_its_end(chorus: Chorus) -> None:
    client = chorus.client("follows")
    job = client.generate(MODEL, PROMPT, LYRICS)
    assert job["status"] == "QUEUED"
    events = list(client.events(job["id"]))
    order = ["queued", "running", "succeeded"]
    statuses = [e.type.rsplit(".", 1)[1] for e in events if e.type.startswith("music.")]
    # Whichever way they came (the stream, or polling on a Chorus without it): in order,
    # ending with the terminal one, whose data is the finished job.
    assert statuses == sorted(statuses, key=order.index) and statuses[-1] == "succeeded"
    assert events[-1].type == "music.generation.succeeded"
    assert events[-1].data["id"] == job["id"] and events[-1].data["status"] == "SUCCEEDED"
    with pytest.raises(NotFoundError):
        next(client.events("luid_01aaaaaaaaaaaaaaaaaaaaaaaa"))


def test_cancel(chorus: Chorus, tmp_path: Path) -> None:
    client = chorus.client("cancels")
    job = client.generate(MODEL, SLOW, LYRICS)
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["cost"]["state"] == "released"
    with pytest.raises(Conflict) as again:
        client.cancel(job["id"])
    assert again.value.status == 409 and again.value.code == "job_not_cancellable"
    with pytest.raises(JobCancelled) as waited:
        client.wait(job["id"])
    assert waited.value.code == "cancelled" and waited.value.job["status"] == "CANCELLED"
    with pytest.raises(Conflict) as download:
        client.download(job, tmp_path / "never.wav")
    assert download.value.code == "audio_not_ready"
    assert list(tmp_path.iterdir()) == []


def test_a_wait_that_runs_out_says_so_with_the_job(chorus: Chorus) -> None:
    client = chorus.client("impatient")
    began = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        client.generate(MODEL, SLOW, LYRICS, wait=2)
    assert 1.5 < time.monotonic() - began < 15
    assert raised.value.job["status"] in {"QUEUED", "RUNNING"}
    client.cancel(raised.value.job["id"])


def test_a_failed_job_raises_job_failed_with_its_code(chorus: Chorus) -> None:
    client = chorus.client("fails")
    with pytest.raises(JobFailed) as raised:
        client.generate(MODEL, "[sim:error] " + PROMPT, LYRICS, wait=60)
    assert raised.value.code == "upstream_failed"
    assert raised.value.job["status"] == "FAILED"


def test_typed_errors(chorus: Chorus) -> None:
    with pytest.raises(AuthenticationError) as bad_key:
        Client(chorus.base, "sk-not-a-key").get("luid_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert bad_key.value.status == 403
    assert bad_key.value.request_id  # Chorus's X-Request-Id, to quote to its operators

    client = chorus.client("errors")
    with pytest.raises(NotFoundError) as unknown:
        client.get("luid_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")

    with pytest.raises(InvalidRequest) as invalid:
        client.generate(MODEL, PROMPT)  # no lyrics
    assert (invalid.value.status, invalid.value.param) == (400, "lyrics")
    with pytest.raises(InvalidRequest) as unknown_field:
        client.generate(MODEL, PROMPT, LYRICS, colour="blue")
    assert unknown_field.value.param == "colour"

    broke = chorus.client("broke", amount=0)
    with pytest.raises(InsufficientBalance) as quota:
        broke.generate(MODEL, PROMPT, LYRICS)
    assert (quota.value.status, quota.value.code) == (429, "insufficient_quota")
    assert broke.list()["data"] == []


def test_list_models_balance(chorus: Chorus) -> None:
    client = chorus.client("lists", amount=1000)
    first = client.generate(MODEL, SLOW, LYRICS)
    second = client.generate(MODEL, SLOW, LYRICS)
    page = client.list(limit=1)
    assert [j["id"] for j in page["data"]] == [second["id"]] and page["has_more"]
    assert [j["id"] for j in client.iter_jobs(page_size=1)] == [second["id"], first["id"]]
    assert client.list(status="SUCCEEDED")["data"] == []

    models = {m["id"]: m for m in client.models()}
    assert MODEL in models
    (balance,) = client.balance()
    assert balance["available"] + balance["held"] == 1000 and balance["held"] > 0
    for job in (first, second):
        client.cancel(job["id"])


def test_model(chorus: Chorus) -> None:
    paths = requests.get(f"{chorus.base}/openapi.json", timeout=30).json()["paths"]
    if not any(p.startswith("/v1/models/{") for p in paths):
        pytest.skip("this Chorus has no GET /v1/models/{id} yet")
    client = chorus.client("one-model")
    assert client.model(MODEL)["id"] == MODEL
    with pytest.raises(NotFoundError):
        client.model("no-such-model")


# ------------------------------------------------------------------ retries


class Flaky:
    """A proxy in front of Chorus that spoils the first answers as scripted: ``lost`` sends
    the request on and drops the answer (the connection closes with nothing), ``busy``
    answers 503 with ``Retry-After: 1`` without sending it on."""

    def __init__(self, base: str, script: list[str]) -> None:
        self.base, self.script = base, script
        self.keys: list[str | None] = []
        self.times: list[float] = []

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        self.keys.append(handler.headers.get("Idempotency-Key"))
        self.times.append(time.monotonic())
        act = self.script.pop(0) if self.script else "pass"
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if act == "busy":
            handler.send_response(503)
            handler.send_header("Retry-After", "1")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        answer = requests.request(
            handler.command,
            self.base + handler.path,
            data=body,
            headers=headers,
            timeout=90,
        )
        if act == "lost":
            handler.close_connection = True  # Chorus made the job; the client never hears
            return
        handler.send_response(answer.status_code)
        for name in ("Content-Type", "Location", "Idempotent-Replayed"):
            if name in answer.headers:
                handler.send_header(name, answer.headers[name])
        handler.send_header("Content-Length", str(len(answer.content)))
        handler.end_headers()
        handler.wfile.write(answer.content)


@pytest.fixture
def flaky(chorus: Chorus) -> Iterator[tuple[str, Flaky]]:
    proxy = Flaky(chorus.base, [])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            proxy.handle(self)

        def do_POST(self) -> None:
            proxy.handle(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", proxy
    server.shutdown()


def test_a_lost_answer_and_a_503_are_retried_with_one_job_made(
    chorus: Chorus, flaky: tuple[str, Flaky]
) -> None:
    url, proxy = flaky
    key = chorus.client("retries").api_key
    client = Client(url, key, timeout=30)
    proxy.script[:] = ["lost", "busy"]
    job = client.generate(MODEL, PROMPT, LYRICS)
    # Three tries of one request under one key: the first made the job, the second met a
    # 503 and the third waited out its Retry-After and got the first answer again.
    assert len(proxy.keys) == 3 and proxy.keys[0] and len(set(proxy.keys)) == 1
    assert proxy.times[2] - proxy.times[1] >= 1.0
    jobs = Client(chorus.base, key).list()["data"]
    assert [j["id"] for j in jobs] == [job["id"]]


def test_retries_are_bounded(chorus: Chorus, flaky: tuple[str, Flaky]) -> None:
    url, proxy = flaky
    client = Client(url, chorus.client("bounded").api_key, max_retries=1)
    proxy.script[:] = ["busy", "busy", "busy"]
    with pytest.raises(Unavailable) as raised:
        client.get("luid_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert raised.value.status == 503 and raised.value.retry_after == 1
    assert len(proxy.keys) == 2

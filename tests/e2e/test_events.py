"""Live event streams end to end: the real web process (gunicorn, its event loop following the
streams), worker, scheduler and simulator; real Postgres and Redis.

A job's stream replays its stored events and follows it to its end, with progress while it
runs; the org's stream follows every job of the org. Hundreds of open streams hold none of the
web process's few threads: submits and reads still answer beside them.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.catalog.models import Model
from app.db import Database
from tests.conftest import GOOD_BODY, Processes, auth, funded_key, wait_for
from tests.serving import start_web

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
TIMEOUT = (10, 60)  # generous: the machine is shared; no time is asserted
# Long enough for a few tenths of progress to show while the job runs.
EXPECTED_SECONDS = 3.0


class Reader:
    """The events of an open SSE response, one block at a time."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.lines = response.iter_lines(chunk_size=None, decode_unicode=True)

    def next(self) -> dict[str, Any] | None:
        """The next block: its fields (``data`` decoded), ``{"comment": ...}`` for a comment;
        None once the server ended the stream."""
        fields: dict[str, Any] = {}
        for line in self.lines:
            if not line:
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                fields.setdefault("comment", line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        return fields or None

    def events(self, until: Any = None) -> list[dict[str, Any]]:
        """Every event (no comments) until the stream ends, or until ``until(event)``."""
        seen = []
        while (block := self.next()) is not None:
            if "event" in block:
                seen.append(block)
                if until is not None and until(seen):
                    break
        return seen


def open_stream(base: str, path: str, key: str, **headers: str) -> Reader:
    response = requests.get(
        base + path, headers={**auth(key), **headers}, stream=True, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "X-Chorus-Follow" not in response.headers  # the private header never leaves
    return Reader(response)


def submit(base: str, key: str) -> str:
    response = requests.post(base + URL, json=GOOD_BODY, headers=auth(key), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def steady(job: dict[str, Any]) -> dict[str, Any]:
    """The job object without its freshly signed links, which differ on every read."""
    urls = {k: v for k, v in job["urls"].items() if k != "audio"}
    return {**{k: v for k, v in job.items() if k not in ("audio", "urls")}, "urls": urls}


@pytest.fixture
def web(sim: str, procs: Processes, db: Database) -> str:
    with db.transaction() as session:
        session.execute(sa.update(Model).values(expected_seconds=EXPECTED_SECONDS))
    procs.worker()
    procs.scheduler()
    procs.wait_first_round()
    return start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="4", EVENTS_KEEPALIVE_SECONDS="1")


def test_a_job_stream_follows_the_job_to_its_end_and_resumes(web: str, db: Database) -> None:
    key, stranger = funded_key(db, "listener"), funded_key(db, "stranger")
    job_id = submit(web, key)
    stream = open_stream(web, f"{URL}/{job_id}/events", key)
    events = stream.events()  # to the end: the server closes the stream after the terminal one
    names = [e["event"] for e in events]
    assert names[:2] == ["music.generation.queued", "music.generation.running"], names
    assert names[-1] == "music.generation.succeeded", names
    progress = events[2:-1]
    assert progress and {e["event"] for e in progress} == {"progress"}, names
    fractions = [e["data"]["progress"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    assert all(e["data"]["id"] == job_id and isinstance(e["data"]["eta"], int) for e in progress)
    # Stored events carry their position; progress none (a resume continues from the stored).
    assert all("id" not in e for e in progress)
    ids = [int(e["id"]) for e in (events[0], events[1], events[-1])]
    assert ids == sorted(ids)
    got = requests.get(f"{web}{URL}/{job_id}", headers=auth(key), timeout=TIMEOUT).json()
    assert steady(events[-1]["data"]) == steady(got) and got["status"] == "SUCCEEDED"
    assert events[1]["data"]["id"] == job_id
    # The running event's job, rendered by the tail, has its eta as its GET would.
    assert events[1]["data"]["status"] == "RUNNING"
    assert isinstance(events[1]["data"]["eta"], int)

    # Resumed after the running event: only what came after it, and the stream ends.
    resumed = open_stream(web, f"{URL}/{job_id}/events", key, **{"Last-Event-ID": events[1]["id"]})
    assert [e["event"] for e in resumed.events()] == ["music.generation.succeeded"]
    resumed = open_stream(web, f"{URL}/{job_id}/events?last_event_id={events[-1]['id']}", key)
    assert resumed.events() == []

    # Refused as every /v1 route refuses: the job is no other org's; the position is a number.
    other = requests.get(f"{web}{URL}/{job_id}/events", headers=auth(stranger), timeout=TIMEOUT)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    bad = requests.get(
        f"{web}/v1/events", headers={**auth(key), "Last-Event-ID": "soon"}, timeout=TIMEOUT
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert bad.headers.get("X-Request-ID")


def test_the_org_stream_sees_every_job_of_the_org_and_keeps_alive(web: str, db: Database) -> None:
    key, other = funded_key(db, "watcher"), funded_key(db, "neighbour")
    stream = open_stream(web, "/v1/events", key)
    # Nothing happens yet: a keep-alive comment comes each EVENTS_KEEPALIVE_SECONDS.
    assert stream.next() == {"comment": "keep-alive"}
    jobs = {submit(web, key), submit(web, key)}
    foreign = submit(web, other)
    done: set[str] = set()

    def both_ended(seen: list[dict[str, Any]]) -> bool:
        if seen[-1]["event"] == "music.generation.succeeded":
            done.add(seen[-1]["data"]["id"])
        return done == jobs

    events = stream.events(until=both_ended)
    assert {e["data"]["id"] for e in events} == jobs  # never the other org's
    assert foreign not in {e["data"]["id"] for e in events}
    for job_id in jobs:
        names = [e["event"] for e in events if e["data"]["id"] == job_id]
        assert names == [
            "music.generation.queued",
            "music.generation.running",
            "music.generation.succeeded",
        ]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    stream.response.close()

    # Resumed from the first event: the rest again, from the stored events.
    resumed = open_stream(web, "/v1/events", key, **{"Last-Event-ID": events[0]["id"]})
    again = resumed.events(until=lambda seen: len(seen) == len(events) - 1)
    assert [e["id"] for e in again] == [e["id"] for e in events[1:]]
    resumed.response.close()


STREAMS = 500


@pytest.fixture
def crowd(web: str, db: Database) -> Iterator[tuple[str, str, list[socket.socket]]]:
    """``STREAMS`` org streams held open on the one web process (of 4 threads)."""
    key = funded_key(db, "crowd")
    host, port = web.removeprefix("http://").split(":")
    opening = (
        f"GET /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    with ExitStack() as stack:
        socks = []
        for _ in range(STREAMS):
            sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=60))
            sock.sendall(opening)
            socks.append(sock)
        for sock in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "a stream was closed"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
        yield web, key, socks


def test_hundreds_of_open_streams_hold_no_thread(
    crowd: tuple[str, str, list[socket.socket]],
) -> None:
    web, key, socks = crowd
    # All open at once, on a process of 4 threads: submits and reads still answer.
    for _ in range(5):
        job_id = submit(web, key)
        read = requests.get(f"{web}{URL}/{job_id}", headers=auth(key), timeout=TIMEOUT)
        assert read.status_code == 200
    # And the streams are live: each of a sample sees the new job's events.
    for sock in socks[:: STREAMS // 10]:
        seen = b""

        def got(sock: socket.socket = sock) -> bool:
            nonlocal seen
            seen += sock.recv(65536)
            return job_id.encode() in seen

        wait_for(got, 60, message="the stream to carry the new job's events")


def test_a_stopping_web_process_ends_its_streams_at_once(
    sim: str, procs: Processes, db: Database
) -> None:
    """Streams that never end by themselves must not hold a stop (a deploy, a restart) until
    gunicorn's graceful timeout (30 s) kills the process: they end, and clients resume."""
    web = start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="4")
    key = funded_key(db, "deployed")
    streams = [open_stream(web, "/v1/events", key) for _ in range(3)]
    job_id = submit(web, key)
    first = streams[0].events(until=lambda seen: True)
    assert first[0]["data"]["id"] == job_id  # live, on the event loop
    procs.kill("web", signal.SIGTERM)  # waits at most 20 s for the process to exit
    for stream in streams:
        assert [e for e in stream.events() if e["event"] != "music.generation.queued"] == []

"""``Client.events`` against a crafted event-stream server over a real socket: events are
yielded as they arrive (not when the stream ends), and a connection dropped in the middle of
an event is resumed with ``Last-Event-ID``, losing and repeating nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chorus_client import Client, Event, Unavailable


class Script:
    """What each connection of the server sends, and what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.first_seen = threading.Event()  # set by the test once it has the first event
        self.held_until_seen: bool | None = None


def handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Stream(BaseHTTPRequestHandler):
        # HTTP/1.0: the body is everything until the server closes, no Content-Length and
        # no chunked encoding, the case where reading "what has arrived" matters most.
        def do_GET(self) -> None:
            script.asked.append(self.headers.get("Last-Event-ID"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            if len(script.asked) == 1:
                self.wfile.write(
                    b'retry: 50\nevent: music.generation.queued\nid: 1\ndata: {"s": "QUEUED"}\n\n'
                )
                self.wfile.flush()
                # The client must hand event 1 over while this connection is still open.
                script.held_until_seen = script.first_seen.wait(10)
                self.wfile.write(b": keep-alive\n\nevent: music.generation.running\nid: 2\n")
                self.wfile.write(b'data: {"s": "RUNNING"}\n\nevent: progress\ndata: {"p": 0.')
                # Dropped in the middle of the progress event: it is never delivered.
            elif len(script.asked) == 2:
                self.wfile.write(b'event: progress\ndata: {"p": 0.6}\n\n')
                self.wfile.write(
                    b'event: music.generation.succeeded\nid: 3\ndata: {"s": "SUCCEEDED"}\n\n'
                )
                self.wfile.write(b'event: never\nid: 4\ndata: {"s": "after the end"}\n\n')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Stream


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(script))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", script
    httpd.shutdown()


def test_events_arrive_live_and_resume_after_a_dropped_connection(
    server: tuple[str, Script],
) -> None:
    base, script = server
    client = Client(base, "key", timeout=5)
    seen: list[Event] = []
    for event in client.events("luid_1"):
        seen.append(event)
        script.first_seen.set()
    assert script.held_until_seen is True
    assert [(e.type, e.id, e.data) for e in seen] == [
        ("music.generation.queued", "1", {"s": "QUEUED"}),
        ("music.generation.running", "2", {"s": "RUNNING"}),
        ("progress", None, {"p": 0.6}),
        ("music.generation.succeeded", "3", {"s": "SUCCEEDED"}),
    ]
    # The second connection named the last event the client had; none was opened after
    # the terminal event.
    assert script.asked == [None, "2"]


def test_a_resume_can_start_from_a_given_event(server: tuple[str, Script]) -> None:
    base, script = server
    script.asked.append(None)  # the server's next connection is its second act
    events = list(Client(base, "key", timeout=5).events("luid_1", last_event_id="2"))
    assert [e.id for e in events] == [None, "3"]
    assert script.asked == [None, "2"]


def test_a_server_that_cannot_be_reached_is_unavailable_after_bounded_retries() -> None:
    client = Client("http://127.0.0.1:9", "key", timeout=1, max_retries=2, max_retry_wait=0.1)
    with pytest.raises(Unavailable) as raised:
        next(client.events("luid_1"))
    assert raised.value.code == "connection_error"


def test_without_the_stream_the_job_is_polled_into_status_events() -> None:
    """An older Chorus answers 404 for the stream while the job exists: each status change
    becomes an event, progress too, and polling stops at the end."""
    reads = [
        {"status": "QUEUED"},
        {"status": "QUEUED"},
        {"status": "RUNNING", "progress": 0.2, "eta": 2},
        {"status": "RUNNING", "progress": 0.2, "eta": 2},
        {"status": "RUNNING", "progress": 0.7, "eta": 2},
        {"status": "SUCCEEDED", "progress": 1.0},
    ]
    asked: list[str] = []

    class Old(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.endswith("/events") or not reads:
                body = b'{"error": {"message": "Not found", "type": "not_found_error", "param": null, "code": "not_found"}}'
                self.send_response(404)
            else:
                body = json.dumps({"id": "luid_1", **reads.pop(0)}).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Old)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{httpd.server_port}", "key", timeout=5)
        events = list(client.events("luid_1", poll_interval=0.01))
    finally:
        httpd.shutdown()
    assert [(e.type, e.id) for e in events] == [
        ("music.generation.queued", None),
        ("music.generation.running", None),
        ("progress", None),
        ("music.generation.succeeded", None),
    ]
    assert events[2].data == {"id": "luid_1", "progress": 0.7, "eta": 2}
    assert events[-1].data["status"] == "SUCCEEDED"
    # One try of the stream, then only the job: the check that it exists, and the polls.
    assert asked.count("/v1/music/generations/luid_1/events") == 1
    assert len(asked) == 1 + 6 and not reads

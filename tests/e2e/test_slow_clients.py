"""Slow clients against the real web process, started as `chorus web` starts it (issue 14).

A slow-loris client sends its headers a few bytes at a time; a slow upload sends its body so.
Neither may hold one of the web process's threads: the event loop reads each request whole
first (app/webserver.py), with a deadline on the headers and one on the body. A client that
half-closes its side still reads its answer, and so does one whose upload is refused while it
is still sending it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests

from tests.conftest import GOOD_BODY, Processes, auth, funded_key, wait_for
from tests.serving import start_web

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
SLOW_LORIS = 300
SLOW_BODIES = 12  # more than the 2 × 4 threads of the server below
# Generous: the answers must come, however busy the shared machine is; no time is asserted.
CLIENT_TIMEOUT = 60


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT)
    return sock


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the one response the server sends on ``sock`` (it closes after)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        if length and len(body) >= length[0]:
            break
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


class Trickle:
    """Sockets that each send a byte of their request every ``every`` seconds, until told to
    finish (the rest at once) or to stop."""

    def __init__(self, socks: list[socket.socket], requests_: list[bytes], upto: list[int]) -> None:
        self.socks, self.requests, self.sent = socks, requests_, upto
        self.stop = threading.Event()
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self, every: float = 2.0) -> None:
        while not self.stop.wait(every):
            for i, sock in enumerate(self.socks):
                if self.sent[i] < len(self.requests[i]) - 1:
                    sock.sendall(self.requests[i][self.sent[i] : self.sent[i] + 1])
                    self.sent[i] += 1
            self.rounds += 1

    def finish(self, i: int) -> None:
        self.socks[i].sendall(self.requests[i][self.sent[i] :])


@pytest.fixture
def slow(procs: Processes) -> Iterator[tuple[str, Trickle, Trickle]]:
    """The server, SLOW_LORIS connections stuck in their headers and SLOW_BODIES in their
    bodies, each already some bytes in."""
    # Deadlines far away, so that the slow clients stay for the whole test.
    base = start_web(
        procs,
        WEB_THREADS="4",
        REQUEST_HEADER_TIMEOUT="300",
        REQUEST_BODY_TIMEOUT="300",
    )
    with ExitStack() as stack:
        loris = [stack.enter_context(connect(base)) for _ in range(SLOW_LORIS)]
        get = b"GET /healthz HTTP/1.1\r\nHost: chorus\r\nX-Slow: " + b"z" * 40 + b"\r\n\r\n"
        for sock in loris:
            sock.sendall(get[:10])
        bodies = [stack.enter_context(connect(base)) for _ in range(SLOW_BODIES)]
        payload = json.dumps(GOOD_BODY).encode()
        post = (
            f"POST {URL} HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        head = post.index(b"\r\n\r\n") + 4
        for sock in bodies:
            sock.sendall(post[: head + 5])
        loris_trickle = Trickle(loris, [get] * SLOW_LORIS, [10] * SLOW_LORIS)
        body_trickle = Trickle(bodies, [post] * SLOW_BODIES, [head + 5] * SLOW_BODIES)
        loris_trickle.thread.start()
        body_trickle.thread.start()
        yield base, loris_trickle, body_trickle
        loris_trickle.stop.set()
        body_trickle.stop.set()


def test_the_api_answers_beside_slow_loris_connections_and_slow_uploads(
    slow: tuple[str, Trickle, Trickle], db: Any
) -> None:
    base, loris, bodies = slow
    key = funded_key(db, "brisk")
    # Each slow client has trickled more of its request in since it connected.
    wait_for(lambda: loris.rounds and bodies.rounds, 60, message="the slow clients to send more")
    http = requests.Session()
    for _ in range(5):
        assert http.get(f"{base}/healthz", timeout=CLIENT_TIMEOUT).status_code == 200
        posted = http.post(
            f"{base}{URL}", json=GOOD_BODY, headers=auth(key), timeout=CLIENT_TIMEOUT
        )
        assert posted.status_code == 202, posted.text
        job = http.get(posted.headers["Location"], headers=auth(key), timeout=CLIENT_TIMEOUT)
        assert job.status_code == 200 and job.json()["id"] == posted.json()["id"]
        assert http.get(f"{base}/v1/balance", headers=auth(key), timeout=CLIENT_TIMEOUT).ok
    # The slow clients were there all along, and are served once they have said it all.
    for i in range(0, SLOW_LORIS, SLOW_LORIS // 10):
        loris.finish(i)
        assert answer(loris.socks[i])[0] == 200
    for i in range(SLOW_BODIES):
        bodies.finish(i)
        # No key in these: a whole request, answered by the app as any other.
        assert answer(bodies.socks[i])[0] == 403


@pytest.fixture
def strict(procs: Processes) -> str:
    return start_web(
        procs,
        WEB_CONCURRENCY="1",
        WEB_THREADS="4",
        REQUEST_HEADER_TIMEOUT="1",
        REQUEST_BODY_TIMEOUT="1",
        MAX_CONTENT_LENGTH="10000",
    )


def test_headers_not_sent_in_time_close_the_connection(strict: str) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: chorus\r\n")
        assert sock.recv(1024) == b""  # closed by the server, with nothing said
    assert requests.get(f"{strict}/healthz", timeout=CLIENT_TIMEOUT).status_code == 200


@pytest.mark.parametrize("path", [URL, "/v2/generate/audio"])
def test_a_body_not_sent_in_time_is_408_in_the_surfaces_shape(strict: str, path: str) -> None:
    with connect(strict) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        status, body = answer(sock)
    assert status == 408
    error = json.loads(body)
    if path == URL:
        assert error["error"]["code"] == "request_timeout"
    else:
        assert error["statusCode"] == 408


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


def test_bodies_over_max_content_length_are_413_chunked_or_not(strict: str, db: Any) -> None:
    key = funded_key(db, "big")
    big = json.dumps({**GOOD_BODY, "lyrics": "la " * 5000}).encode()
    assert len(big) > 10000
    # Chunked (no length said): read up to the limit, then refused.
    response = requests.post(
        f"{strict}{URL}",
        data=chunks(big),
        headers={**auth(key), "Content-Type": "application/json"},
        timeout=CLIENT_TIMEOUT,
    )
    assert response.status_code == 413, response.text
    # A length over the limit is refused on the header alone: the body is never sent.
    with connect(strict) as sock:
        sock.sendall(
            f"POST {URL} HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n".encode()
        )
        assert answer(sock)[0] == 413
    # A chunked body within the limit is read whole, as one with a length.
    small = json.dumps(GOOD_BODY).encode()
    response = requests.post(
        f"{strict}{URL}",
        data=chunks(small, 7),
        headers={**auth(key), "Content-Type": "application/json"},
        timeout=CLIENT_TIMEOUT,
    )
    assert response.status_code == 202, response.text


def test_forwarded_proto_is_taken_from_loopback_and_forwarded_for_from_nowhere(
    procs: Processes, db: Any
) -> None:
    base = start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="4", RATE_LIMIT="3 per minute")
    key = funded_key(db, "proxied")
    # From loopback (gunicorn's FORWARDED_ALLOW_IPS by default), the scheme is believed.
    posted = requests.post(
        f"{base}{URL}",
        json=GOOD_BODY,
        headers={**auth(key), "X-Forwarded-Proto": "https"},
        timeout=CLIENT_TIMEOUT,
    )
    assert posted.status_code == 202, posted.text
    assert posted.json()["urls"]["get"].startswith("https://")
    # The client's address is not: made-up keys from "other" addresses all spend this one's
    # budget of failures, and then its valid key is refused too.
    for n in range(3):
        refused = requests.get(
            f"{base}/v1/balance",
            headers={**auth("chs_made_up"), "X-Forwarded-For": f"203.0.113.{n}"},
            timeout=CLIENT_TIMEOUT,
        )
        assert refused.status_code == 403
    spent = requests.get(
        f"{base}/v1/balance",
        headers={**auth(key), "X-Forwarded-For": "203.0.113.99"},
        timeout=CLIENT_TIMEOUT,
    )
    assert spent.status_code == 429, spent.text

    # Each request has its access line, with the connection's address, not the header's.
    # (Written once the response has gone out: looked for until it is there.)
    def refused_line() -> dict[str, Any] | None:
        for line in procs.log("web").splitlines():
            if line.startswith("{"):
                fields: dict[str, Any] = json.loads(line)
                if fields.get("logger") == "gunicorn.access" and fields.get("status") == 429:
                    return fields
        return None

    line = wait_for(refused_line, 30, message="the access line")
    assert line["path"] == "/v1/balance" and line["remote_addr"] == "127.0.0.1"


def post_head(path: str, key: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n"
    ).encode()


def test_a_whole_request_then_a_half_close_gets_its_answer(strict: str, db: Any) -> None:
    key = funded_key(db, "halfway")
    payload = json.dumps(GOOD_BODY).encode()
    with connect(strict) as sock:
        sock.sendall(post_head(URL, key, f"Content-Length: {len(payload)}\r\n") + payload)
        sock.shutdown(socket.SHUT_WR)  # said all it will say; it still reads
        status, body = answer(sock)
        assert status == 202, body
        assert json.loads(body)["status"] == "QUEUED"
        assert sock.recv(1024) == b""  # and then the server closes, as nothing can follow


@pytest.mark.parametrize("path", [URL, "/v2/generate/audio"])
def test_a_chunked_body_cut_short_by_a_half_close_is_400_in_the_surfaces_shape(
    strict: str, db: Any, path: str
) -> None:
    key = funded_key(db, "cut")
    with connect(strict) as sock:
        sock.sendall(post_head(path, key, "Transfer-Encoding: chunked\r\n") + b'9\r\n{"model":')
        sock.shutdown(socket.SHUT_WR)
        status, body = answer(sock)
    assert status == 400, body
    error = json.loads(body)
    if path == URL:
        assert error["error"]["code"] == "bad_request"
        assert "cut short" in error["error"]["message"]
    else:
        assert error["statusCode"] == 400


def test_an_upload_over_the_limit_still_being_sent_can_read_its_413(strict: str, db: Any) -> None:
    """The server answers on the header and closes while the body is still coming: the bytes
    it never read must not make its kernel reset the connection under the answer."""
    key = funded_key(db, "huge")
    with connect(strict) as sock:
        framing = "Content-Length: 5000000\r\nConnection: close\r\n"
        # More than the server buffers before it stops reading (uvicorn's 64 KiB).
        sock.sendall(post_head(URL, key, framing) + b"x" * 400_000)
        status, body = answer(sock)
        assert status == 413, body
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # Then its end: FIN, not RST, though the client never finished sending.
        assert sock.recv(1024) == b""


def test_a_client_still_sending_after_its_answer_is_cut_off_in_the_end(
    strict: str, db: Any
) -> None:
    """The server reads and discards for a bounded time only: then it closes, and the client's
    next bytes are refused."""
    key = funded_key(db, "endless")
    with connect(strict) as sock:
        sock.sendall(post_head(URL, key, "Content-Length: 5000000\r\nConnection: close\r\n"))
        assert answer(sock)[0] == 413
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            # Paced, so that the 5 MB it announced last far longer than any lingering.
            for _ in range(5000):
                sock.sendall(b"x" * 1000)
                time.sleep(0.02)


def test_an_idle_keep_alive_connection_is_still_closed(strict: str) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: chorus\r\n\r\n")
        assert answer(sock)[0] == 200
        # Kept open for a next request, then closed by the keep-alive timeout (gunicorn's).
        assert sock.recv(1024) == b""

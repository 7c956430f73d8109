"""Hostile input never gets a 5xx: the corpus of ``tests/api/hostile_cases.py`` against a real
gunicorn, as `chorus web` runs it, over real sockets.

Every request is sent as bytes with ``socket``, so what the HTTP framing does (chunking,
lengths, broken connections) is real, and the web server's own parsing is in the path. Each
case asserts: an answer (unless the client itself left), a status under 500, and for a 4xx from
Chorus its contract's error body (OpenAI's on ``/v1`` and elsewhere, AIMLAPI's on ``/v2``). A
4xx the web server writes itself, for framing it cannot read, is accepted in any body. After
each case the same server must still answer a normal request.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from config import load_settings
from tests.api.hostile_cases import CASES, METRICS_TOKEN, ROUTES, Case
from tests.conftest import (
    GOOD_BODY,
    Processes,
    auth,
    funded_key,
    own_chorus,
)
from tests.serving import start_web

TIMEOUT = 20.0
PIECES = 4  # a slow client's request, in this many pieces
OPENAI_FIELDS = {"message", "type", "param", "code"}
AIMLAPI_FIELDS = {"message", "path", "requestId", "statusCode", "timestamp"}


@dataclass
class Server:
    base: str
    port: int
    values: dict[bytes, bytes]
    procs: Processes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    """One gunicorn for the whole corpus, on a database of its own (no other test's TRUNCATE
    can reach it): a funded org with a QUEUED job, and an org with no money."""
    tmp = tmp_path_factory.mktemp("hostile")
    with own_chorus("hostile", redis_url, tmp) as (env, db):
        key, broke = funded_key(db, "hostile"), funded_key(db, "broke", amount=0)
        # The operators' console and /metrics are on, where the app has them.
        env = {**env, "OPS_BASIC_AUTH": "ops:ops-secret", "METRICS_TOKEN": METRICS_TOKEN}
        procs = Processes(env, tmp)
        try:
            base = start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="8")
            job = requests.post(
                f"{base}/v1/music/generations", json=GOOD_BODY, headers=auth(key), timeout=30
            )
            assert job.status_code == 202, job.text
            values = {
                b"{KEY}": key.encode(),
                b"{BROKE}": broke.encode(),
                b"{JOB}": job.json()["id"].encode(),
            }
            yield Server(base, int(base.rsplit(":", 1)[1]), values, procs)
        finally:
            procs.stop_all()


# ------------------------------------------------------------------ the wire


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


def fill(data: bytes, values: dict[bytes, bytes]) -> bytes:
    for name, value in values.items():
        data = data.replace(name, value)
    return data


def render(case: Case, values: dict[bytes, bytes]) -> bytes:
    if case.raw is not None:
        return fill(case.raw, values)
    lines = [f"{case.method} ".encode() + case.target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if case.key is not None:
        scheme = b"" if case.key.startswith("Basic ") else b"Bearer "
        lines.append(b"Authorization: " + scheme + case.key.encode())
    lines += [name.encode() + b": " + value for name, value in case.headers]
    if case.body is not None:
        if case.content_type is not None and "Content-Type" not in dict(case.headers):
            lines.append(b"Content-Type: " + case.content_type)
        lines.append(b"Content-Length: %d" % len(case.body))
    lines.append(b"Connection: close")
    return fill(b"\r\n".join(lines) + b"\r\n\r\n" + (case.body or b""), values)


def exchange(port: int, data: bytes, case: Case) -> Answer | None:
    """Send ``data`` on a fresh connection and read the answer (None: none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            if case.pace:
                for start in range(0, len(data), len(data) // PIECES + 1):
                    sock.sendall(data[start : start + len(data) // PIECES + 1])
                    time.sleep(case.pace)
            else:
                sock.sendall(data)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading everything: the answer may be there
        if case.abort:
            # Reset, not a polite close: the connection dies under the server.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None
        response = http.client.HTTPResponse(sock, method=case.method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        except http.client.IncompleteRead as exc:
            body = exc.partial
        return Answer(response.status, response.getheader("Content-Type") or "", body)


def is_v2(case: Case) -> bool:
    target = case.target if case.raw is None else case.raw.split(b" ", 2)[1]
    return target.startswith(b"/v2/")


def assert_error_shape(case: Case, answer: Answer) -> None:
    body = json.loads(answer.body)
    if is_v2(case):
        assert set(body) == AIMLAPI_FIELDS, body
        assert body["statusCode"] == answer.status, body
    else:
        assert set(body) == {"error"} and set(body["error"]) == OPENAI_FIELDS, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def still_answers(port: int, values: dict[bytes, bytes]) -> None:
    normal = Case("normal")
    answer = exchange(port, render(normal, values), normal)
    assert answer is not None and answer.status == 200, answer


@pytest.mark.parametrize("case", CASES, ids=[c.name[:120] for c in CASES])
def test_hostile_input_gets_no_5xx(server: Server, case: Case) -> None:
    answer = exchange(server.port, render(case, server.values), case)
    if answer is None:
        assert case.abort or case.may_drop, "the connection was dropped without an answer"
    else:
        detail = f"{answer.status} {answer.body[:300]!r}"
        assert answer.status < 500 or (case.not_implemented and answer.status == 501), detail
        if 400 <= answer.status < 500:
            if answer.content_type.startswith("application/json"):
                assert_error_shape(case, answer)
            else:
                # Only the web server, for framing it cannot read, answers in its own words
                # (and the operators' pages, which are not the API).
                assert case.transport or case.any_body, detail
    still_answers(server.port, server.values)


def test_the_corpus_is_big_and_covers_every_route(server: Server) -> None:
    from app.web import create_app

    rules = {r.rule for r in create_app(load_settings(server.procs.env)).url_map.iter_rules()}
    # Every rule is exercised (the corpus also names routes an app may add behind a setting).
    assert rules <= {route.rule for route in ROUTES}, rules - {route.rule for route in ROUTES}
    assert len(CASES) >= 400
    assert len({c.name for c in CASES}) == len(CASES)


def test_the_server_logged_no_error_and_kept_its_worker(server: Server) -> None:
    # A 5xx would show above; an exception the server swallowed shows here.
    log = server.procs.log("web")
    assert "Traceback" not in log, log[-6000:]
    # Nor did a worker die and get replaced, which a normal request afterwards would not show.
    assert log.count("Booting worker") == 1, log[-6000:]


class InvalidChunkSize(Exception):
    """As gunicorn's: its parse errors are plain Exceptions of its own."""


class BrokenChunks(io.RawIOBase):
    """A request body as a server's de-chunker serves a malformed one: reading it raises."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise InvalidChunkSize("Invalid chunk size: b'zz'")


@pytest.mark.parametrize(
    ("content_type", "read"),
    [
        ("application/json", lambda r: r.get_data()),
        ("application/x-www-form-urlencoded", lambda r: r.form),
        ("multipart/form-data; boundary=b", lambda r: r.get_data(parse_form_data=True)),
    ],
)
def test_a_body_that_cannot_be_read_is_a_400_however_it_is_read(
    content_type: str, read: Any
) -> None:
    from werkzeug.exceptions import BadRequest
    from werkzeug.test import EnvironBuilder

    from app.web import ChorusRequest

    environ = EnvironBuilder(method="POST", content_type=content_type).get_environ()
    environ.update({"wsgi.input": BrokenChunks(), "wsgi.input_terminated": True})
    environ.pop("CONTENT_LENGTH", None)
    with pytest.raises(BadRequest):
        read(ChorusRequest(environ))

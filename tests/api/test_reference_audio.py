"""Reference audio is fetched and read before the job is accepted (CONTRACT §1a, issue rules)."""

from __future__ import annotations

import io
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.conftest import GOOD_BODY, auth, job_rows, wait_for
from tests.serving import serve

pytestmark = pytest.mark.usefixtures("catalog")
URL = "/v1/music/generations"


def wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x10" * int(seconds * rate))
    return buffer.getvalue()


FILES = {
    "/long.wav": (200, wav(20)),
    "/short.wav": (200, wav(10)),
    "/notes.txt": (200, b"these are not sounds" * 100),
    "/huge.wav": (200, wav(120, rate=16000)),
    # Over music-cover's 6 minutes, small enough for any size cap.
    "/seven-minutes.wav": (200, wav(420, rate=1000)),
    "/gone.wav": (404, b"no"),
}


class Gate:
    """Holds every request for ``/held.wav`` until opened, counting those it holds."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.held = 0
        self.lock = threading.Lock()

    def hold(self) -> Response:
        with self.lock:
            self.held += 1
        self.open.wait(60)
        return Response(wav(20), mimetype="audio/wav")


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()


@pytest.fixture
def files(gate: Gate) -> Iterator[str]:
    @Request.application
    def serve(request: Request) -> Response:
        if request.path == "/drip.wav":
            return Response(drip(wav(20)), mimetype="audio/wav")
        if request.path == "/held.wav":
            return gate.hold()
        if request.path == "/cut.wav":
            # Promises more than it sends, then hangs up.
            return Response(
                iter([wav(20)[:4000]]), mimetype="audio/wav", headers={"Content-Length": "999999"}
            )
        status, body = FILES.get(request.path, (404, b""))
        return Response(body, status=status, mimetype="audio/wav")

    server = make_server("127.0.0.1", 0, serve, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def drip(body: bytes) -> Iterator[bytes]:
    """A slow-loris file server: a byte every 0.2 s, never silent long enough for a read
    timeout to fire."""
    for at in range(len(body)):
        yield body[at : at + 1]
        time.sleep(0.2)


def submit(client: Any, key: str, url: str) -> Any:
    body = {**GOOD_BODY, "model": "minimax-music", "reference_audio_url": url}
    return client.post(URL, json=body, headers=auth(key))


@pytest.mark.env(ALLOW_PRIVATE_URLS="1", REFERENCE_AUDIO_MAX_BYTES="3000000")
def test_a_long_enough_wav_is_accepted(client: Any, api_key: str, files: str) -> None:
    response = submit(client, api_key, f"{files}/long.wav")
    assert response.status_code == 202, response.get_json()


@pytest.mark.env(ALLOW_PRIVATE_URLS="1", REFERENCE_AUDIO_MAX_BYTES="3000000")
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/short.wav", "longer than 15 seconds"),
        ("/notes.txt", "WAV or MP3"),
        ("/huge.wav", "larger than"),
        ("/gone.wav", "HTTP 404"),
        ("/cut.wav", "could not be fetched"),
    ],
)
def test_bad_reference_audio_is_400_before_anything_is_stored(
    client: Any, db: Any, api_key: str, files: str, path: str, reason: str
) -> None:
    response = submit(client, api_key, f"{files}{path}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "reference_audio_url"
    assert error["code"] == "invalid_reference_audio"
    assert reason in error["message"]
    assert job_rows(db) == []


@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_a_reference_that_trickles_in_is_cut_off_at_the_fetch_deadline(
    client: Any, db: Any, api_key: str, files: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.jobs import reference_audio

    monkeypatch.setattr(reference_audio, "FETCH_SECONDS", 1.0)
    response = submit(client, api_key, f"{files}/drip.wav")
    assert response.status_code == 400, response.get_json()
    assert "took longer than 1 seconds" in response.get_json()["error"]["message"]
    assert job_rows(db) == []


@pytest.mark.env(ALLOW_PRIVATE_URLS="1", REFERENCE_FETCH_CONCURRENCY="2")
def test_past_the_fetch_cap_a_reference_submit_is_503_at_once_and_the_others_finish(
    app: Any, db: Any, api_key: str, files: str, gate: Gate
) -> None:
    with serve(app) as base, ThreadPoolExecutor(2) as pool:
        post = partial(real_submit, base, api_key)
        slow = [pool.submit(post, f"{files}/held.wav") for _ in range(2)]
        wait_for(lambda: gate.held == 2, 30, message="two fetches under way")
        busy = post(f"{files}/long.wav")
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "5"
        error = busy.json()["error"]
        assert (error["code"], error["param"]) == ("reference_fetch_busy", "reference_audio_url")
        assert job_rows(db) == []
        gate.open.set()
        assert [f.result(timeout=60).status_code for f in slow] == [202, 202]
        # Their slots are free again.
        assert post(f"{files}/long.wav").status_code == 202
    assert len(job_rows(db)) == 3


def real_submit(base: str, key: str, url: str) -> requests.Response:
    body = {**GOOD_BODY, "model": "minimax-music", "reference_audio_url": url}
    return requests.post(f"{base}{URL}", json=body, headers=auth(key), timeout=60)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/long.wav",
        "http://localhost/long.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/long.wav",
        "http://10.0.0.5/long.wav",
        "http://[::ffff:127.0.0.1]/long.wav",
    ],
)
def test_private_addresses_are_refused_by_default(
    client: Any, db: Any, api_key: str, url: str
) -> None:
    response = submit(client, api_key, url)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "reference_audio_url"
    # Refused by the SSRF guard, or earlier as a malformed URL (the IPv4-mapped literal).
    assert "not allowed" in error["message"] or "Not a valid URL" in error["message"]
    assert job_rows(db) == []

"""Early audio end to end: a real gunicorn web, worker, sync worker, scheduler and simulator.

A job on a streaming model (music-2.0 on MiniMax) gets an ``audio_preview`` link while it
runs; the link plays the song while it is being made, and the bytes are the finished file's.
Listeners are followed on the web process's event loop: dozens of them hold none of its few
threads, a listener that hangs up frees its place, and a stopping process ends them.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.jobs.previews import AudioPreview
from tests.conftest import GOOD_BODY, Processes, auth, wait_for
from tests.serving import start_web

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
# Six seconds of making: the first piece at 1.5 s, the rest a second apart.
BODY = {**GOOD_BODY, "model": "music-2.0", "prompt": "A calm song [sim:latency=6]"}
TIMEOUT = (10, 60)  # generous: the machine is shared; no time is asserted


@pytest.fixture
def stack(sim: str, procs: Processes) -> Processes:
    """Everything but the web process, which each test starts as it needs it."""
    procs.worker()
    procs.sync_worker()
    procs.scheduler()
    procs.wait_first_round()
    return procs


@pytest.fixture
def web(stack: Processes) -> str:
    return start_web(stack, WEB_CONCURRENCY="1", WEB_THREADS="8", PREVIEW_MAX_LISTENERS="1")


def running_song(web: str, key: str, seconds: float) -> tuple[str, str]:
    """A streamed job made in ``seconds``: its URL and, once it runs, its preview link."""
    body = {**BODY, "prompt": f"A calm song [sim:latency={seconds:g}]"}
    created = requests.post(web + URL, json=body, headers=auth(key), timeout=TIMEOUT)
    assert created.status_code == 202, created.text
    job_url = f"{web}{URL}/{created.json()['id']}"

    def preview_link() -> str | None:
        job = requests.get(job_url, headers=auth(key), timeout=TIMEOUT).json()
        return job["audio_preview"] if job["status"] == "RUNNING" else None

    link: str = wait_for(preview_link, timeout=30, interval=0.1)
    return job_url, link


def succeeded(job_url: str, key: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = requests.get(job_url, headers=auth(key), timeout=TIMEOUT).json()
        return job if job["status"] == "SUCCEEDED" else None

    job: dict[str, Any] = wait_for(done, timeout=60)
    return job


def test_the_preview_plays_before_the_job_succeeds_and_is_the_song(
    web: str, api_key: str, db: object
) -> None:
    job_url, link = running_song(web, api_key, 6)
    job_id = job_url.rsplit("/", 1)[1]

    # A second listener on a one-listener web process is turned away, not queued.
    received: list[tuple[float, bytes]] = []
    with requests.get(link, stream=True, timeout=30) as listening:
        assert listening.status_code == 200
        assert listening.headers["Content-Type"] == "audio/wav"
        assert listening.headers.get("Transfer-Encoding") == "chunked"
        busy = requests.get(link, timeout=10)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "preview_busy"
        assert busy.headers["Retry-After"]
        # The web stays free for everything else meanwhile.
        assert requests.get(job_url, headers=auth(api_key), timeout=5).status_code == 200
        for chunk in listening.iter_content(chunk_size=None):
            received.append((time.monotonic(), chunk))
            if len(received) == 1:
                first_status = requests.get(job_url, headers=auth(api_key), timeout=5).json()
    assert first_status["status"] == "RUNNING"  # heard before the song was finished

    job = succeeded(job_url, api_key)
    assert job["audio_preview"] is None
    final = requests.get(job["audio"], timeout=10)
    assert final.status_code == 200
    heard = b"".join(chunk for _, chunk in received)
    assert heard == final.content
    assert len(received) > 1  # in pieces, not in one go at the end

    # The pieces are gone with the job's end; the link now leads to the durable copy.
    with db.session() as session:  # type: ignore[attr-defined]
        left = session.scalar(
            sa.select(sa.func.count())
            .select_from(AudioPreview)
            .where(AudioPreview.job_id == job_id)
        )
    assert left == 0
    moved = requests.get(link, allow_redirects=False, timeout=10)
    assert moved.status_code == 307
    assert "/v1/files/audio/" in moved.headers["Location"]
    assert requests.get(link, timeout=10).content == final.content


LISTENERS = 50


# A minute of audio (some 5 MB): more than a listener's queue and socket buffers hold.
@pytest.mark.env(SIM_AUDIO_SECONDS="60")
def test_fifty_listeners_on_four_threads_hear_the_whole_song_while_the_api_answers(
    stack: Processes, api_key: str
) -> None:
    web = start_web(stack, WEB_CONCURRENCY="1", WEB_THREADS="4")
    job_url, link = running_song(web, api_key, 15)
    with ExitStack() as held:
        listening = []
        for _ in range(LISTENERS):
            answer = requests.get(link, stream=True, allow_redirects=False, timeout=TIMEOUT)
            held.enter_context(answer)
            assert answer.status_code == 200, answer.text
            listening.append(answer)
        # All open at once, on a process of 4 threads: submits and reads still answer.
        for _ in range(3):
            other = requests.post(web + URL, json=GOOD_BODY, headers=auth(api_key), timeout=10)
            assert other.status_code == 202, other.text
            assert requests.get(job_url, headers=auth(api_key), timeout=10).status_code == 200
        assert requests.get(job_url, headers=auth(api_key), timeout=10).json()["status"] == (
            "RUNNING"
        )
        # Read one after the other: the later ones lag the song meanwhile (and may hear its
        # end from the durable copy), yet each hears all of it.
        heard = [b"".join(answer.iter_content(chunk_size=None)) for answer in listening]
    final = requests.get(succeeded(job_url, api_key)["audio"], timeout=TIMEOUT).content
    assert len(final) > 0
    assert all(song == final for song in heard), [len(song) for song in heard]


def test_a_listener_that_hangs_up_frees_its_place(web: str, api_key: str) -> None:
    _, link = running_song(web, api_key, 20)
    first = requests.get(link, stream=True, timeout=TIMEOUT)
    assert first.status_code == 200
    busy = requests.get(link, timeout=TIMEOUT)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "preview_busy"
    first.close()

    def admitted() -> requests.Response | None:
        answer = requests.get(link, stream=True, timeout=TIMEOUT)
        if answer.status_code == 200:
            return answer
        answer.close()
        return None

    # Noticed at the next piece sent to the gone client, a second or so later.
    wait_for(admitted, timeout=15, interval=0.5, message="the place to be freed").close()


def test_a_stopping_web_process_ends_its_listeners_at_once(stack: Processes, api_key: str) -> None:
    """A song still being made must not hold a stop (a deploy) until gunicorn's graceful
    timeout (30 s) kills the process: its listeners end."""
    web = start_web(stack, WEB_CONCURRENCY="1", WEB_THREADS="4")
    _, link = running_song(web, api_key, 60)
    listening = [requests.get(link, stream=True, timeout=TIMEOUT) for _ in range(3)]
    assert all(answer.status_code == 200 for answer in listening)
    stack.kill("web", signal.SIGTERM)  # waits at most 20 s for the process to exit
    for answer in listening:
        b"".join(answer.iter_content(chunk_size=None))  # ended, not hanging
        answer.close()


def test_a_stream_cut_short_fails_the_running_job_and_leaves_no_pieces(
    web: str, api_key: str, db: object
) -> None:
    body = {**BODY, "prompt": "A calm song [sim:latency=3] [sim:stream-cut]"}
    created = requests.post(web + URL, json=body, headers=auth(api_key), timeout=10)
    job_url = f"{web}{URL}/{created.json()['id']}"

    def ended() -> dict[str, object] | None:
        job = requests.get(job_url, headers=auth(api_key), timeout=5).json()
        return job if job["status"] in ("SUCCEEDED", "FAILED") else None

    job = wait_for(ended, timeout=30, interval=0.1)
    assert job["status"] == "FAILED"
    # It ran (its audio had begun) and was sent once: a broken stream is not sent again.
    assert job["started_at"] is not None
    assert job["upstream"]["attempts"] == 1  # type: ignore[index]
    assert job["error"]["code"] == "upstream_stream_incomplete"  # type: ignore[index]
    assert job["cost"]["state"] == "released"  # type: ignore[index]
    with db.session() as session:  # type: ignore[attr-defined]
        assert session.scalar(sa.select(sa.func.count()).select_from(AudioPreview)) == 0

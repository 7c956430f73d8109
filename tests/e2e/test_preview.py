"""Early audio end to end: a real gunicorn web, worker, sync worker, scheduler and simulator.

A job on a streaming model (music-2.0 on MiniMax) gets an ``audio_preview`` link while it
runs; the link plays the song while it is being made, and the bytes are the finished file's.
"""

from __future__ import annotations

import time

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


@pytest.fixture
def web(sim: str, procs: Processes) -> str:
    procs.worker()
    procs.sync_worker()
    procs.scheduler()
    procs.wait_first_round()
    return start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="8", PREVIEW_MAX_LISTENERS="1")


def test_the_preview_plays_before_the_job_succeeds_and_is_the_song(
    web: str, api_key: str, db: object
) -> None:
    created = requests.post(web + URL, json=BODY, headers=auth(api_key), timeout=10)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job_url = f"{web}{URL}/{job_id}"

    def preview_link() -> str | None:
        job = requests.get(job_url, headers=auth(api_key), timeout=10).json()
        return job["audio_preview"] if job["status"] == "RUNNING" else None

    link = wait_for(preview_link, timeout=20, interval=0.1)
    assert link

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

    job = wait_for(
        lambda: (
            j
            if (j := requests.get(job_url, headers=auth(api_key), timeout=5).json())["status"]
            == "SUCCEEDED"
            else None
        ),
        timeout=20,
    )
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
    # Freed: the slot of the listener that finished is free again.
    assert requests.get(link, timeout=10).content == final.content


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

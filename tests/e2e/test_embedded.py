"""The embedded default end to end: ``chorus dev`` with no DATABASE_URL and no REDIS_URL.

SQLite, the filesystem broker and the simulator, exactly as ``make run`` starts them, driven
over real HTTP the way the README's curl steps do.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_make_run_path_reaches_succeeded_with_a_valid_wav(tmp_path: Path) -> None:
    web_port, sim_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        CHORUS_VAR_DIR=str(tmp_path / "var"),
        PORT=str(web_port),
        SIM_PORT=str(sim_port),
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dev"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{web_port}"
    try:

        def key_printed() -> str | None:
            found = re.search(r"API key \(dev\): (\S+)", (tmp_path / "dev.log").read_text())
            return found.group(1) if found else None

        key = wait_for(key_printed, 60, message="the dev key")
        wait_for(lambda: _up(f"{base}/healthz"), 60, message="the API")
        headers = {"Authorization": f"Bearer {key}"}
        body = {
            "model": "music-2.6",
            "catelogid": "music_gen",
            "prompt": "Pop, happy",
            "lyrics": "[Verse]\nHello sun\n[Chorus]\nHello day",
        }
        created = requests.post(
            f"{base}/v1/music/generations", json=body, headers=headers, timeout=10
        )
        assert created.status_code == 202, created.text
        location = created.headers["Location"]

        def finished() -> dict[str, object] | None:
            job = requests.get(location, headers=headers, timeout=10).json()
            return job if job["status"] in {"SUCCEEDED", "FAILED"} else None

        job = wait_for(finished, 60, interval=0.5, message="the job to end")
        assert job["status"] == "SUCCEEDED", job
        audio = requests.get(str(job["audio"]), timeout=10)
        assert audio.status_code == 200
        with wave.open(io.BytesIO(audio.content)) as track:
            assert track.getnframes() > 0 and track.getframerate() == 32000
        children = _descendants(proc.pid)
        assert len(children) >= 5, children  # web, workers, scheduler, simulator (and more)
        # Everything lived under the var folder: the SQLite file and the stored track.
        assert (tmp_path / "var" / "chorus.db").exists()
        assert list((tmp_path / "var" / "audio").glob("*.wav"))
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail(
                "chorus dev did not stop on Ctrl-C:\n" + (tmp_path / "dev.log").read_text()[-4000:]
            )
    # Ctrl-C stopped every process it started (honcho gives each its own process group, so
    # they are tracked by pid).
    wait_for(
        lambda: not any(_alive(pid) for pid in children),
        20,
        message="every process chorus dev started to exit",
    )


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or still starting up
        return False

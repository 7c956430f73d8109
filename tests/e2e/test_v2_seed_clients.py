"""The AIMLAPI quick-code clients of seeds 001 and 003, run as published against Chorus.

Each client is a file in ``seed_clients/``. The test runs a copy in which only the base URL,
the key and (for minimax-music) the reference track's URL are replaced, as a plain
``python`` process: its own ``requests`` calls, status checks and ten-second polling. Chorus
runs as in production: gunicorn, a Celery worker and the scheduler as child processes, on real
Postgres and Redis, with the simulator as the upstream. The track each client ends with is
then downloaded and read as audio.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.db import Database
from app.jobs.models import Job
from tests.api.test_reference_audio import wav
from tests.conftest import Processes, funded_key, sim_record
from tests.serving import start_web

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

CLIENTS = Path(__file__).with_name("seed_clients")
AIMLAPI_BASE = "https://api.aimlapi.com"
KEY_PLACEHOLDER = "<YOUR_AIMLAPI_KEY>"
SEED_REFERENCE = "https://tand-dev.github.io/audio-hosting/spinning-head-271171.mp3"
REFERENCE_PATH = "/spinning-head.wav"
DONE = "Generation complete:/n "  # the clients' own spelling


@pytest.fixture
def reference_track() -> Iterator[str]:
    """A local server with a 20-second WAV: the seed's track is on the internet."""
    track = wav(20)

    @Request.application
    def serve(request: Request) -> Response:
        if request.path != REFERENCE_PATH:
            return Response(b"", status=404)
        return Response(track, mimetype="audio/wav")

    server = make_server("127.0.0.1", 0, serve, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}{REFERENCE_PATH}"
    server.shutdown()


def prepared(name: str, tmp_path: Path, substitutions: dict[str, str]) -> Path:
    """A copy of the client with the substitutions made, each of which must really apply."""
    source = (CLIENTS / name).read_text()
    for old, new in substitutions.items():
        assert old in source, f"{name} no longer contains {old!r}"
        source = source.replace(old, new)
    script = tmp_path / name
    script.write_text(source)
    return script


def final_answer(stdout: str) -> dict[str, Any]:
    """The generation the client printed last (Python's repr of the JSON it read)."""
    assert DONE in stdout, stdout
    answer: dict[str, Any] = ast.literal_eval(stdout.split(DONE, 1)[1].strip())
    return answer


@pytest.mark.timeout(600)
@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_the_seed_clients_run_unchanged_and_end_with_the_track(
    db: Database, sim: str, procs: Processes, reference_track: str, tmp_path: Path
) -> None:
    key = funded_key(db, "seed-user")
    base = start_web(procs)
    procs.worker()
    procs.scheduler()

    common = {AIMLAPI_BASE: base, KEY_PLACEHOLDER: key}
    clients = {
        "aimlapi_minimax_music.py": (
            "minimax-music",
            "sim-apilaplas",
            {**common, SEED_REFERENCE: reference_track},
        ),
        "aimlapi_music_1_5.py": ("minimax/music-1.5", "sim-aimlapi", common),
    }
    started = time.monotonic()
    running = {
        name: subprocess.Popen(
            [sys.executable, str(prepared(name, tmp_path, subs))],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (_, _, subs) in clients.items()
    }
    outputs = {name: proc.communicate(timeout=300) for name, proc in running.items()}
    elapsed = time.monotonic() - started

    for name, (model, account, _) in clients.items():
        stdout, stderr = outputs[name]
        assert running[name].returncode == 0, f"{name}:\n{stdout}\n{stderr}"
        assert "Error:" not in stdout, stdout
        created = ast.literal_eval(stdout.split("Generation: ", 1)[1].splitlines()[0])
        assert created["status"] == "queued" and created["id"].startswith("luid_")

        # The client waited at least once, ten seconds, as it is written to.
        waits = stdout.count("Still waiting... Checking again in 10 seconds.")
        assert waits >= 1, stdout
        assert elapsed >= 10 * waits

        answer = final_answer(stdout)
        assert answer["id"] == created["id"]
        assert answer["status"] == "completed" and answer["error"] is None, answer

        # The track it ends with is real audio, from Chorus's own copy.
        track = requests.get(answer["audio_file"]["url"], timeout=30)
        assert track.status_code == 200
        assert track.headers["Content-Type"] == "audio/wav"
        with wave.open(io.BytesIO(track.content)) as audio:
            assert audio.getnchannels() >= 1
            assert audio.getnframes() / audio.getframerate() > 1.0

        with db.session() as session:
            job = session.get(Job, created["id"])
            assert job is not None
            assert (job.surface, job.model_name, job.status) == ("v2", model, "SUCCEEDED")
            assert job.account_id == account
            assert job.audio_size == len(track.content)
            generation_id = job.generation_id

        # One generation upstream per client request.
        (generation,) = [g for g in sim_record(sim)["generations"] if g["id"] == generation_id]
        assert generation["submit_count"] == 1

    web_log = procs.log("web")
    assert web_log.count("POST /v2/generate/audio") == len(clients)
    polls = web_log.count("GET /v2/generate/audio?generation_id=")
    assert polls == sum(out.count("Still waiting") + 1 for out, _ in outputs.values())
    with db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == len(clients)

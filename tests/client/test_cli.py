"""``chorus-client``, run as a real subprocess (the console script in the venv and
``python -m chorus_client``) against a real Chorus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mutagen
import pytest

from tests.client.conftest import Chorus
from tests.conftest import GOOD_BODY, funded_key

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(sys.executable).with_name("chorus-client"))
MODEL, PROMPT, LYRICS = GOOD_BODY["model"], GOOD_BODY["prompt"], GOOD_BODY["lyrics"]


def run(
    chorus: Chorus, key: str, *args: str, module: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "chorus_client"] if module else [SCRIPT]
    return subprocess.run(
        [*argv, *args],
        env=env if env is not None else {"CHORUS_BASE_URL": chorus.base, "CHORUS_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generate_waits_prints_progress_and_saves_a_playable_file(
    chorus: Chorus, tmp_path: Path
) -> None:
    key = funded_key(chorus.db, "cli")
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(LYRICS)
    out = tmp_path / "song.wav"
    done = run(
        chorus,
        key,
        "generate",
        "--model",
        MODEL,
        "--prompt",
        PROMPT,
        "--lyrics-file",
        str(lyrics),
        "--wait",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "SUCCEEDED"
    lines = done.stderr.splitlines()
    # A queued job's line says where it stands in its queue.
    assert lines[0] == f"{job['id']}  QUEUED  position 0"
    assert f"{job['id']}  SUCCEEDED" in lines
    assert lines[-1].startswith(f"saved {out} ({job['audio_info']['size']} bytes")
    audio = mutagen.File(out)
    assert audio is not None and audio.info.length > 0.5
    assert out.stat().st_size == job["audio_info"]["size"]

    # The other commands, through `python -m chorus_client`.
    got = run(chorus, key, "get", job["id"], module=True)
    assert got.returncode == 0 and json.loads(got.stdout)["id"] == job["id"]
    again = tmp_path / "again.wav"
    saved = run(chorus, key, "download", job["id"], "-o", str(again), module=True)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.strip() == str(again) and again.read_bytes() == out.read_bytes()
    # Cancelling a finished job is an API error (409): exit 3.
    refused = run(chorus, key, "cancel", job["id"])
    assert refused.returncode == 3 and "job_not_cancellable" in refused.stderr


def test_exit_codes(chorus: Chorus) -> None:
    key = funded_key(chorus.db, "cli-codes")
    failed = run(
        chorus, key, "generate", "--model", MODEL, "--prompt", "[sim:error] x", "--lyrics", "la"
    )
    assert failed.returncode == 0  # without --wait: the job was accepted
    job_id = json.loads(failed.stdout)["id"]
    waited = run(
        chorus,
        key,
        "generate",
        "--model",
        MODEL,
        "--prompt",
        "[sim:error] x",
        "--lyrics",
        "la",
        "--wait",
    )
    assert waited.returncode == 1, waited.stderr
    assert "upstream_failed" in waited.stderr

    queued = run(
        chorus,
        key,
        "generate",
        "--model",
        MODEL,
        "--prompt",
        "[sim:latency=30] x",
        "--lyrics",
        "la",
    )
    cancelled = run(chorus, key, "cancel", json.loads(queued.stdout)["id"])
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "CANCELLED"

    assert run(chorus, "sk-wrong", "get", job_id).returncode == 3
    assert run(chorus, key, "get", "luid_01aaaaaaaaaaaaaaaaaaaaaaaa").returncode == 3
    assert run(chorus, key, "generate", "--model", MODEL).returncode == 2  # no --prompt
    no_key = run(chorus, key, "get", job_id, env={"CHORUS_BASE_URL": chorus.base})
    assert no_key.returncode == 2 and "CHORUS_API_KEY" in no_key.stderr

"""A worker's own metrics server (``METRICS_PORT``): the samples of its folder, written by
another process, behind the same bearer token as the web's ``/metrics``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app import metrics
from config import load_settings
from tests.scrape import samples, value
from tests.serving import free_port
from workers import metrics as worker_metrics

TOKEN = "worker-metrics-token"
WRITE = """
from app import metrics
metrics.JOB_CHANGES.labels("music-2.6", "SUCCEEDED", "").inc(3)
metrics.UPSTREAM_CALLS.labels("sim-aimlapi", "submit", "ok").inc()
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A worker's folder with samples another process wrote, and this process bound to it."""
    found = metrics.bind(tmp_path / "metrics", "worker", {})
    subprocess.run(
        [sys.executable, "-c", WRITE], env={"PATH": "", metrics.ENV: str(found)}, check=True
    )
    monkeypatch.setenv(metrics.ENV, str(found))
    return found


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # No database: the server reads only its folder.
    return {"CHORUS_VAR_DIR": str(tmp_path / "var")}


@pytest.fixture
def served(env: dict[str, str], folder: Path) -> Iterator[str]:
    port = free_port()
    settings = load_settings({**env, "METRICS_PORT": str(port), "METRICS_TOKEN": TOKEN})
    server = worker_metrics.start(settings)
    assert server is not None
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def test_the_worker_serves_its_folder_behind_the_token(served: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = requests.get(f"{served}/metrics", headers=headers, timeout=5)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert b"chorus_" not in refused.content
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{served}/other", headers=good, timeout=5).status_code == 404
    answer = requests.get(f"{served}/metrics", headers=good, timeout=5)
    assert answer.status_code == 200
    found = samples(answer.text)
    changes = "chorus_job_status_changes_total"
    assert value(found, changes, model="music-2.6", status="SUCCEEDED", error_code="") == 3
    calls = "chorus_upstream_calls_total"
    assert value(found, calls, account="sim-aimlapi", operation="submit", code="ok") == 1


def test_no_server_without_a_token_or_a_port(env: dict[str, str], folder: Path) -> None:
    port = str(free_port())
    assert worker_metrics.start(load_settings({**env, "METRICS_PORT": port})) is None
    assert worker_metrics.start(load_settings({**env, "METRICS_TOKEN": TOKEN})) is None
    off = {**env, "METRICS_PORT": port, "METRICS_TOKEN": TOKEN, "METRICS_ENABLED": "false"}
    assert worker_metrics.start(load_settings(off)) is None

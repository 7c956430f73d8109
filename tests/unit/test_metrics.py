"""``app.metrics``: the samples of every process folder under METRICS_DIR summed as one, with
the live gauges of processes that have ended dropped and their counters kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app import metrics
from tests.scrape import samples, value

WRITE = """
import sys
from app import metrics
metrics.WAITERS.inc(int(sys.argv[1]))
metrics.WAIT_CAPACITY.set(24)
metrics.JOB_CHANGES.labels("music-2.6", "SUCCEEDED", "").inc(int(sys.argv[1]))
"""
# Stays alive, holding a slot, until its stdin closes.
HOLD = WRITE + "print('ready', flush=True)\nsys.stdin.read()\n"


def write(folder: Path, script: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(count)],
        env={"PATH": "", metrics.ENV: str(folder)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_ended_processes_keep_their_counts_and_lose_their_live_gauges(tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    web = metrics.bind(root, "web", {})
    worker = metrics.bind(root, "worker", {})
    ended = write(web, WRITE, 2)
    assert ended.wait(timeout=30) == 0
    alive = write(worker, HOLD, 3)
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "ready"
        body, _ = metrics.render(root)
        found = samples(body.decode())
    finally:
        alive.communicate(timeout=30)
    changes = "chorus_job_status_changes_total"
    # Both folders summed; the ended process's counter still counts.
    assert value(found, changes, model="music-2.6", status="SUCCEEDED", error_code="") == 5
    # Its live gauges went with it: only the live process's slot and capacity are left.
    assert value(found, "chorus_wait_waiters") == 3
    assert value(found, "chorus_wait_capacity") == 24
    assert not list(web.glob("gauge_live*"))


def test_reset_empties_the_deployment_and_bind_gives_a_fresh_folder(tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    folder = metrics.bind(root, "web", {})
    (folder / "counter_1.db").write_bytes(b"old")
    env: dict[str, str] = {}
    assert metrics.bind(root, "web", env) == folder and env[metrics.ENV] == str(folder)
    assert list(folder.iterdir()) == []
    (folder / "counter_1.db").write_bytes(b"old")
    metrics.reset(root)
    assert root.is_dir() and list(root.iterdir()) == []

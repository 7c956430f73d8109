"""Phase (m): time to first audio, through the early-audio preview and through the final link.

Jobs on a MiniMax model that streams (``stream: true``), on the simulator at a realistic
latency (each job's own ``[sim:latency=S]``, drawn from ``latency ± jitter``; the first piece
comes at a quarter of it). For each job: seconds from its POST to the first byte of audio read
from its ``audio_preview`` link, and to the first byte read from its ``audio`` link once it
succeeded. Each listener reads its song to the end, and the song it heard is compared with the
finished file.

Beside them, GET of a job on one keep-alive connection: alone before the jobs, then while
most listeners are held open (they wait on the web's event loop, not on its threads).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import requests

from bench.procs import Supervisor
from bench.stack import (
    CATEGORY,
    LYRICS,
    Stack,
    free_port,
    load_catalog,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_sync_worker,
    start_web,
    start_worker,
    wait_worker_ready,
)
from bench.stats import percentile

MODEL = "bench-preview"
CATALOG = f"""\
accounts:
  - id: bench-preview-minimax
    provider: minimax
    base_url: "{{sim_url}}"
    max_in_flight: 1000
    read_timeout: 600
models:
  - name: {MODEL}
    upstream_model: music-2.6
    stream: true
    deadline_seconds: 900
    limits: {{prompt: {{min: 0, max: 2000}}, lyrics: {{min: 1, max: 3500}}, reference_audio: none}}
    routes: [{{category: {CATEGORY}, accounts: [bench-preview-minimax]}}]
"""
ENV = {"SIM_THREADS": "256", "SYNC_CONCURRENCY": "128"}
PROBE_SECONDS = 3.0


class Held:
    """How many listeners are open right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n


def _listen(url: str, held: Held | None = None) -> tuple[float | None, bytes]:
    """When the first byte of audio came, and the whole answer."""
    first: float | None = None
    chunks: list[bytes] = []
    with requests.get(url, stream=True, timeout=(5, 600)) as answer:
        if answer.status_code != 200:
            return None, b""
        if held is not None:
            held.add(1)
        try:
            for chunk in answer.iter_content(chunk_size=None):
                if chunk and first is None:
                    first = time.monotonic()
                chunks.append(chunk)
        finally:
            if held is not None:
                held.add(-1)
    return first, b"".join(chunks)


def _probe(url: str, key: str, seconds: float) -> dict[str, Any]:
    """GET ``url`` one request after another for ``seconds``: its latency (ms)."""
    times: list[float] = []
    errors = 0
    with requests.Session() as session:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            began = time.monotonic()
            answer = session.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            times.append((time.monotonic() - began) * 1000)
            errors += answer.status_code != 200
    return {
        "n": len(times),
        "errors": errors,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
    }


def _post(base: str, key: str, latency: float) -> str:
    body = {
        "model": MODEL,
        "catelogid": CATEGORY,
        "prompt": f"A calm song [sim:latency={latency:.2f}]",
        "lyrics": LYRICS,
    }
    job = requests.post(
        f"{base}/v1/music/generations",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    url: str = job.json()["urls"]["get"]
    return url


def _one(base: str, key: str, latency: float, held: Held, out: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    job_url = _post(base, key, latency)
    row: dict[str, Any] = {"latency": latency, "preview_s": None, "final_s": None}
    heard: bytes | None = None
    while True:
        state = requests.get(job_url, headers=headers, timeout=30).json()
        if state["status"] == "RUNNING" and state["audio_preview"] and heard is None:
            first, heard = _listen(state["audio_preview"], held)  # reads until the song ends
            row["preview_s"] = first - started if first else None
            continue
        if state["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            row["status"] = state["status"]
            if state["status"] == "SUCCEEDED":
                first, final = _listen(state["audio"])
                row["final_s"] = first - started if first else None
                row["heard_whole_song"] = heard == final if heard is not None else None
            break
        time.sleep(0.2)
    out.append(row)


def run_preview_phase(
    sup: Supervisor, stack: Stack, *, jobs: int, latency: float, jitter: float
) -> dict[str, Any]:
    reset_jobs(stack)
    load_catalog(stack, "preview", CATALOG)
    port = free_port()
    start_sim(sup, stack, ENV)
    start_web(sup, stack, "web", port, ENV)
    start_worker(sup, stack, ENV)
    start_sync_worker(sup, stack, ENV)
    start_scheduler(sup, stack, ENV)
    wait_worker_ready(sup, stack, sync=True)
    base = f"http://127.0.0.1:{port}"
    probed = _post(base, stack.api_key, latency)  # a job to read (no one listens to it)
    alone = _probe(probed, stack.api_key, PROBE_SECONDS)
    rows: list[dict[str, Any]] = []
    held = Held()
    threads = [
        threading.Thread(
            target=_one,
            args=(
                base,
                stack.api_key,
                max(0.5, random.uniform(latency - jitter, latency + jitter)),
                held,
                rows,
            ),
        )
        for _ in range(jobs)
    ]
    for thread in threads:
        thread.start()
    beside, held_at_probe = _probe_beside(probed, stack.api_key, held, jobs, latency + jitter)
    for thread in threads:
        thread.join()
    for name in ("scheduler", "sync", "worker", "web", "sim"):
        sup.stop(name, grace=3.0 if name == "sync" else 10.0)
    reset_jobs(stack)
    out: dict[str, Any] = {"jobs": jobs, "latency": latency, "jitter": jitter, "rows": rows}
    for kind in ("preview", "final"):
        values = [r[f"{kind}_s"] for r in rows if r[f"{kind}_s"] is not None]
        out[kind] = {
            "n": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
        }
    out["failed"] = sum(1 for r in rows if r.get("status") != "SUCCEEDED")
    out["incomplete"] = sum(1 for r in rows if r.get("heard_whole_song") is False)
    out["get_alone"] = alone
    out["get_beside"] = beside
    out["held_at_probe"] = held_at_probe
    return out


def _probe_beside(
    url: str, key: str, held: Held, jobs: int, within: float
) -> tuple[dict[str, Any] | None, int]:
    """The probe once most listeners are open (None if they never were); how many were."""
    most = max(1, jobs * 3 // 4)
    until = time.monotonic() + within
    while held.count < most and time.monotonic() < until:
        time.sleep(0.1)
    count = held.count
    if count < most:
        return None, count
    return _probe(url, key, PROBE_SECONDS), count

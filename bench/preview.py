"""Phase (m): time to first audio, through the early-audio preview and through the final link.

Jobs on a MiniMax model that streams (``stream: true``), on the simulator at a realistic
latency (each job's own ``[sim:latency=S]``, drawn from ``latency ± jitter``; the first piece
comes at a quarter of it). For each job: seconds from its POST to the first byte of audio read
from its ``audio_preview`` link, and to the first byte read from its ``audio`` link once it
succeeded.
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
# Each listener holds a web thread for the whole song: the web gets Chorus's default threads
# and room for every job's listener (2 processes x 16), fewer waiters and fetches to leave it.
WEB_ENV = {
    **ENV,
    "WEB_THREADS": "32",
    "WAIT_MAX_WAITERS": "4",
    "REFERENCE_FETCH_CONCURRENCY": "2",
    "PREVIEW_MAX_LISTENERS": "16",
}


def _first_byte(url: str) -> float | None:
    with requests.get(url, stream=True, timeout=(5, 600)) as answer:
        if answer.status_code != 200:
            return None
        for chunk in answer.iter_content(chunk_size=None):
            if chunk:
                return time.monotonic()
    return None


def _one(base: str, key: str, latency: float, out: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": MODEL,
        "catelogid": CATEGORY,
        "prompt": f"A calm song [sim:latency={latency:.2f}]",
        "lyrics": LYRICS,
    }
    started = time.monotonic()
    job = requests.post(f"{base}/v1/music/generations", json=body, headers=headers, timeout=30)
    job_url = job.json()["urls"]["get"]
    row: dict[str, Any] = {"latency": latency, "preview_s": None, "final_s": None}
    while True:
        state = requests.get(job_url, headers=headers, timeout=30).json()
        if state["status"] == "RUNNING" and state["audio_preview"] and row["preview_s"] is None:
            first = _first_byte(state["audio_preview"])  # reads until the job ends
            row["preview_s"] = first - started if first else None
            continue
        if state["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            row["status"] = state["status"]
            if state["status"] == "SUCCEEDED":
                first = _first_byte(state["audio"])
                row["final_s"] = first - started if first else None
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
    start_web(sup, stack, "web", port, WEB_ENV)
    start_worker(sup, stack, ENV)
    start_sync_worker(sup, stack, ENV)
    start_scheduler(sup, stack, ENV)
    wait_worker_ready(sup, stack, sync=True)
    rows: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=_one,
            args=(
                f"http://127.0.0.1:{port}",
                stack.api_key,
                max(0.5, random.uniform(latency - jitter, latency + jitter)),
                rows,
            ),
        )
        for _ in range(jobs)
    ]
    for thread in threads:
        thread.start()
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
    return out

"""Phase (g): webhook deliveries, timed from the job's terminal write to the receiver.

A receiver in this process records when each delivery arrives. Run 1: N jobs, every one with
a ``callback_url`` on that receiver; the latency is arrival minus the job's ``finished_at``
(the commit that wrote the event row). Run 2: the same receiver plus one that sleeps a minute
before answering, taking a share of the jobs; the figure is how many deliveries per second
the fast receiver gets while the slow one holds delivery threads until their timeout.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from bench.procs import PhaseError, Supervisor
from bench.stack import (
    CATEGORY,
    LYRICS,
    MODEL,
    Stack,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_web,
    start_webhooks_worker,
    start_worker,
    wait_worker_ready,
)
from bench.stats import describe

# Receivers on 127.0.0.1 need private targets allowed; the timeout is Chorus's default.
PHASE_ENV = {"ALLOW_PRIVATE_URLS": "true", "WEBHOOK_TIMEOUT": "10"}
SUCCEEDED = "music.generation.succeeded"
SLOW_SECONDS = 60.0


class Receiver:
    """A threaded HTTP receiver recording (arrival time, job id) per delivery."""

    def __init__(self, delay: float = 0.0) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                arrived = time.time()
                if delay:
                    time.sleep(delay)
                try:
                    job_id = json.loads(body)["data"]["id"]
                except (ValueError, KeyError):
                    job_id = ""
                with owner.lock:
                    owner.arrivals.append((arrived, job_id))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def submit(port: int, key: str, urls: list[str], clients: int) -> list[str]:
    """POST one job per URL from ``clients`` threads; returns the accepted job ids."""
    jobs = iter(enumerate(urls))
    lock = threading.Lock()
    accepted: list[str] = []
    refused: list[str] = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(jobs, None)
            if item is None:
                break
            index, url = item
            body = {
                "model": MODEL,
                "catelogid": CATEGORY,
                "prompt": f"bench webhooks job {index}: upbeat pop",
                "lyrics": LYRICS,
                "callback_url": url,
                "webhook_events": [SUCCEEDED],
            }
            conn.request("POST", "/v1/music/generations", json.dumps(body), headers)
            response = conn.getresponse()
            data = response.read()
            with lock:
                if response.status == 202:
                    accepted.append(json.loads(data)["id"])
                else:
                    refused.append(f"HTTP {response.status}: {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if refused:
        raise PhaseError(f"(g) {len(refused)} submits refused, e.g. {refused[0]}")
    return accepted


def finished_at(stack: Stack, ids: list[str]) -> dict[str, float]:
    with stack.database().engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, finished_at FROM jobs WHERE status = 'SUCCEEDED'")
        ).all()
    wanted = set(ids)
    return {row.id: row.finished_at.timestamp() for row in rows if row.id in wanted}


def wait_arrivals(receiver: Receiver, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver.lock:
            if len({j for _, j in receiver.arrivals}) >= count:
                return
        time.sleep(0.5)


def delivery_counts(stack: Stack) -> dict[str, int]:
    with stack.database().engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
        ).all()
    return {status: int(n) for status, n in rows}


def run_webhooks_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    web_port: int,
    count: int,
    slow_share: float,
    clients: int,
    wait_timeout: float,
) -> dict[str, Any]:
    reset_jobs(stack)
    start_sim(sup, stack)
    start_web(sup, stack, "web", web_port, PHASE_ENV)
    start_worker(sup, stack, PHASE_ENV)
    start_webhooks_worker(sup, stack, PHASE_ENV)
    start_scheduler(sup, stack, PHASE_ENV)
    results: dict[str, Any] = {"count": count, "slow_share": slow_share, "env": PHASE_ENV}
    try:
        wait_worker_ready(sup, stack)
        with Receiver() as fast:
            print(f"(g) webhooks: {count} jobs, one delivery each", flush=True)
            ids = submit(web_port, stack.api_key, [fast.url] * count, clients)
            wait_arrivals(fast, len(ids), wait_timeout)
            ends = finished_at(stack, ids)
            first: dict[str, float] = {}
            for arrived, job_id in fast.arrivals:
                first.setdefault(job_id, arrived)
            latencies = [first[j] - ends[j] for j in ids if j in first and j in ends]
            results["latency_s"] = describe(latencies)
            times = sorted(first.values())
            span = (times[-1] - times[0]) if len(times) > 1 else None
            # The same rate without a slow receiver: the yardstick for the mixed run's.
            results["alone_per_s"] = (len(times) - 1) / span if span else None
            results["delivered"] = len(first)
            results["jobs_succeeded"] = len(ends)
            results["statuses_after_run1"] = delivery_counts(stack)
        with Receiver() as fast, Receiver(delay=SLOW_SECONDS) as slow:
            every = max(1, round(1 / slow_share)) if slow_share > 0 else 0
            targets = [slow.url if every and i % every == 0 else fast.url for i in range(count)]
            slow_count = targets.count(slow.url)
            print(
                f"(g) webhooks: {count} jobs, {slow_count} of them to a receiver that takes "
                f"{SLOW_SECONDS:g} s",
                flush=True,
            )
            began = time.time()
            ids = submit(web_port, stack.api_key, targets, clients)
            wait_arrivals(fast, count - slow_count, wait_timeout)
            with fast.lock:
                times = sorted(t for t, _ in fast.arrivals)
            span = (times[-1] - times[0]) if len(times) > 1 else None
            results["mixed"] = {
                "jobs": len(ids),
                "slow_jobs": slow_count,
                "fast_delivered": len(times),
                "fast_span_s": span,
                "fast_per_s": (len(times) - 1) / span if span else None,
                "slow_arrived": len(slow.arrivals),
                "elapsed_s": time.time() - began,
            }
            results["statuses_after_run2"] = delivery_counts(stack)
    finally:
        for name in ("scheduler", "webhooks", "worker", "web", "sim"):
            sup.stop(name)
    return results

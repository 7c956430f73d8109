"""The harness's side of the API and the simulator: submitting jobs, reading the simulator's
record, and watching Postgres's connections while a phase runs."""

from __future__ import annotations

import datetime as dt
import http.client
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bench.procs import PhaseError, Sampler
from bench.stack import CATEGORY, LYRICS, MODEL


@dataclass
class SubmitResult:
    started: float  # unix time before the first request left
    ended: float  # unix time after the last answer arrived
    accepted: dict[int, str] = field(default_factory=dict)  # job index -> job id
    failures: Counter[str] = field(default_factory=Counter)  # "HTTP 500" / exception name
    failure_sample: str = ""  # the first refused answer, to say why
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def submit_jobs(
    port: int,
    api_key: str,
    count: int,
    tag: str,
    clients: int,
    *,
    model: str = MODEL,
    marker: str = "",
) -> SubmitResult:
    """POST ``count`` jobs, each with a distinct prompt, from ``clients`` keep-alive threads.

    ``marker`` is appended to every prompt: a simulator marker such as ``[sim:latency=10]``.
    """
    counter = itertools.count()
    lock = threading.Lock()
    result = SubmitResult(started=0.0, ended=0.0)
    gate = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local_lat: list[float] = []
        gate.wait()
        while True:
            with lock:
                index = next(counter)
            if index >= count:
                break
            body = json.dumps(
                {
                    "model": model,
                    "catelogid": CATEGORY,
                    # A distinct prompt per job: a resubmission then shows as a shared fingerprint.
                    "prompt": f"bench {tag} job {index}: upbeat pop, sunny day{marker}",
                    "lyrics": LYRICS,
                }
            )
            began = time.perf_counter()
            try:
                conn.request("POST", "/v1/music/generations", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    result.failures[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            local_lat.append((time.perf_counter() - began) * 1000)
            if response.status != 202:
                with lock:
                    result.failures[f"HTTP {response.status}"] += 1
                    if not result.failure_sample:
                        result.failure_sample = f"HTTP {response.status}: {data[:500]!r}"
            else:
                job_id = json.loads(data)["id"]
                with lock:
                    result.accepted[index] = job_id
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()
        with lock:
            result.latencies_ms.extend(local_lat)

    threads = [
        threading.Thread(target=loop, name=f"submit-{i}", daemon=True) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    result.started = time.time()
    gate.wait()
    for thread in threads:
        thread.join()
    result.ended = time.time()
    return result


class Connections(Sampler):
    """Peak Postgres connections, Chorus's database and the whole (shared) server, sampled
    every half second from a thread of its own for the whole submit-and-wait window."""

    QUERY = sa.text(
        "SELECT count(*) FILTER (WHERE datname = current_database()), count(*), "
        "current_setting('max_connections')::int FROM pg_stat_activity "
        "WHERE backend_type = 'client backend'"
    )

    def __init__(self, database_url: str) -> None:
        super().__init__("pg-connections", 0.5)
        self.engine = sa.create_engine(database_url, pool_size=1, max_overflow=0)
        self.bench_peak = self.server_peak = self.max_connections = 0

    def __exit__(self, *_: object) -> None:
        super().__exit__()
        self.engine.dispose()

    def sample(self) -> None:
        try:
            with self.engine.connect() as conn:
                mine, total, limit = conn.execute(self.QUERY).one()
        except sa.exc.OperationalError:
            # The server refusing us too is the point of watching; try again shortly.
            return
        self.bench_peak = max(self.bench_peak, int(mine))
        self.server_peak = max(self.server_peak, int(total))
        self.max_connections = int(limit)

    def as_dict(self) -> dict[str, int]:
        return {
            "bench_peak": self.bench_peak,
            "server_peak": self.server_peak,
            "max_connections": self.max_connections,
        }


def sim_summary(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/_sim/record?summary=1")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise PhaseError(f"simulator summary answered HTTP {response.status}")
        data: dict[str, Any] = json.loads(body)
        return data
    finally:
        conn.close()


def sim_reset(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/_sim/reset")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise PhaseError(f"simulator reset answered HTTP {response.status}")
    finally:
        conn.close()


def ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None

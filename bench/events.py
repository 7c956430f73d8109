"""Phase (l): live event streams held by one web process, beside POST and GET.

One web process (its default threads), web tier only. GET and POST are measured by a few
keep-alive connections alone, then, for each N of ``--events-streams``, while N org streams
(``GET /v1/events``) of another org are held open on that process. Then the delivery lag: jobs
of the streams' org are cancelled one at a time, every stream gets each ``cancelled`` event,
and a sample of the streams times its arrival; the lag is that time minus the event's row
timestamp (``job_events.created_at``, taken with the status change in its transaction).
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.jobs.models import JobEvent
from app.tenancy.keys import create_key
from bench.http_phase import WARMUP_SECONDS, _create_jobs, job_targets, prober, rates_line
from bench.procs import PhaseError, Supervisor, free_port
from bench.stack import Stack, reset_jobs, start_web
from bench.stats import describe

PHASE_ENV = {"WEB_CONCURRENCY": "1", "EVENTS_MAX_STREAMS": "100000"}
PROBE_CONNECTIONS = 4
GET_JOBS = 8
LAG_EVENTS = 30  # cancels, each an event every stream gets
LAG_PAUSE_S = 0.2
LAG_SAMPLE = 20  # streams whose arrivals are timed (the rest are read and discarded)
OPEN_TIMEOUT_S = 120.0
CANCELLED = b"event: music.generation.cancelled"


class Crowd:
    """``n`` org streams held open; one thread reads them all, timing a sample's events."""

    def __init__(self, port: int, key: str, n: int) -> None:
        self.port, self.key, self.n = port, key, n
        self.socks: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.arrivals: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.closed = 0
        self.sampled = 0
        self.thread = threading.Thread(target=self._read, daemon=True)

    def open(self) -> float:
        """Open every stream and wait for its 200; the seconds that took."""
        began = time.monotonic()
        request = (
            f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\n\r\n"
        ).encode()
        for _ in range(self.n):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=OPEN_TIMEOUT_S)
            sock.sendall(request)
            self.socks.append(sock)
        for sock in self.socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise PhaseError("the web process closed an event stream as it opened")
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise PhaseError(f"an event stream opened with {head[:40]!r}")
            sock.setblocking(False)
        sample = set(range(0, self.n, max(1, self.n // LAG_SAMPLE)))
        self.sampled = len(sample)
        for i, sock in enumerate(self.socks):
            self.selector.register(sock, selectors.EVENT_READ, [i in sample, b""])
        self.thread.start()
        return time.monotonic() - began

    def _read(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.time()
                if not data:
                    self.selector.unregister(sock)
                    self.closed += 1
                    continue
                timed, buffer = key.data
                if timed:
                    key.data[1] = self._arrived(buffer + data, now)

    def _arrived(self, buffer: bytes, now: float) -> bytes:
        *blocks, rest = buffer.split(b"\n\n")
        for block in blocks:
            if CANCELLED in block:
                data = block.split(b"data: ", 1)[1]
                with self.lock:
                    self.arrivals.setdefault(json.loads(data)["id"], []).append(now)
        return rest

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()
        self.selector.close()


def _cancel_one_at_a_time(port: int, key: str, crowd: Crowd) -> list[str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    job_ids = _create_jobs(port, key, LAG_EVENTS)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for job_id in job_ids:
            conn.request("POST", f"/v1/music/generations/{job_id}/cancel", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise PhaseError(f"a cancel answered HTTP {response.status}")
            time.sleep(LAG_PAUSE_S)
    finally:
        conn.close()
    deadline = time.monotonic() + 60
    sampled = crowd.sampled
    while time.monotonic() < deadline:
        with crowd.lock:
            if all(len(crowd.arrivals.get(j, [])) >= sampled for j in job_ids):
                break
        time.sleep(0.2)
    return job_ids


def _lags(stack: Stack, crowd: Crowd, job_ids: list[str]) -> list[float]:
    with stack.database().session() as session:
        made = dict(
            session.execute(
                sa.select(JobEvent.job_id, JobEvent.created_at).where(
                    JobEvent.job_id.in_(job_ids),
                    JobEvent.type == CANCELLED.split(b": ")[1].decode(),
                )
            ).all()
        )
    with crowd.lock:
        return [
            (arrived - made[job_id].timestamp()) * 1000
            for job_id, times in crowd.arrivals.items()
            if job_id in made
            for arrived in times
        ]


def run_events_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    streams: list[int],
    seconds: float,
    use_wrk: bool,
    workdir: Path,
) -> dict[str, Any]:
    reset_jobs(stack)
    with stack.database().transaction() as session:
        listeners = create_key(session, "listeners", label="event streams")
    port = free_port()
    web = start_web(sup, stack, "web-events", port, PHASE_ENV)
    targets = job_targets(port, stack.api_key, _create_jobs(port, stack.api_key, GET_JOBS))

    drive = prober(sup, "web-events", workdir, use_wrk, PROBE_CONNECTIONS)

    for target in targets.values():
        drive(target, WARMUP_SECONDS)
    alone = {kind: drive(target, seconds) for kind, target in targets.items()}
    print(f"    alone: {rates_line(alone)}", flush=True)
    runs = []
    for n in streams:
        crowd = Crowd(port, listeners, n)
        try:
            opened_s = crowd.open()
            beside = {kind: drive(target, seconds) for kind, target in targets.items()}
            job_ids = _cancel_one_at_a_time(port, listeners, crowd)
            lags = _lags(stack, crowd, job_ids)
            closed = crowd.closed
        finally:
            crowd.close()
        expected = LAG_EVENTS * crowd.sampled
        lag = describe(lags)
        print(
            f"    {n:,} streams (opened in {opened_s:.1f} s): {rates_line(beside)}; lag p50 "
            f"{lag['p50'] or 0:.0f} ms, p99 {lag['p99'] or 0:.0f} ms "
            f"({len(lags)}/{expected} events timed)",
            flush=True,
        )
        runs.append(
            {
                "streams": n,
                "opened_s": opened_s,
                "closed_by_server": closed,
                "beside": {k: r.as_dict() for k, r in beside.items()},
                "ratio": {
                    k: (beside[k].rps / alone[k].rps) if alone[k].rps else None for k in targets
                },
                "lag_ms": lag,
                "lag_events": len(lags),
                "lag_expected": expected,
            }
        )
    sup.stop("web-events")
    reset_jobs(stack)
    return {
        "chorus_command": " ".join(web.argv),
        "env": PHASE_ENV,
        "probe_connections": PROBE_CONNECTIONS,
        "seconds": seconds,
        "lag_cancels": LAG_EVENTS,
        "alone": {k: r.as_dict() for k, r in alone.items()},
        "runs": runs,
    }

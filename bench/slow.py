"""Phase (i): API latency beside 300 slow-loris connections and 100 slow reference fetches.

The web process as the Procfile runs it (Chorus's defaults: 2 processes × 32 threads), web
tier only. GET and POST latency is measured by a few keep-alive connections, first alone,
then while:

- ``LORIS`` connections each send their request's headers a byte a second, never finishing
  (the server closes them at REQUEST_HEADER_TIMEOUT; each is opened again at once);
- ``REFERENCES`` clients each keep a submit open whose ``reference_audio_url`` points at a
  server that sends its file a byte a second (Chorus cuts the fetch at its 20 s deadline; a
  submit refused at once for the fetch cap is sent again after ``REFUSED_PAUSE_S``).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.http_phase import WARMUP_SECONDS, _create_jobs, job_targets, prober, rates_line
from bench.procs import Supervisor, free_port
from bench.stack import CATEGORY, LYRICS, Stack, load_catalog, reset_jobs, start_web
from config import load_settings
from config.settings import DEFAULT_WEB_THREADS

LORIS = 300
REFERENCES = 100
# Connections measuring latency: a few clients, so the figure is the wait one request sees,
# not a queue of the load generator's own making.
PROBE_CONNECTIONS = 4
PHASE_ENV = {
    "WEB_CONCURRENCY": "2",
    "WEB_THREADS": str(DEFAULT_WEB_THREADS),
    # The dripping reference server is on this machine.
    "ALLOW_PRIVATE_URLS": "true",
}
REFUSED_PAUSE_S = 1.0
SETTLE_S = 5.0
GET_JOBS = 8
REF_MODEL = "music-ref"
CATALOG = f"""\
models:
  - name: {REF_MODEL}
    upstream_model: minimax/music-2.6
    limits: {{prompt: {{min: 0, max: 2000}}, lyrics: {{min: 1, max: 3500}}, reference_audio: optional}}
    routes: [{{category: {CATEGORY}, accounts: [sim-aimlapi]}}]
"""


class _Drip(BaseHTTPRequestHandler):
    """A WAV that arrives a byte a second, for as long as the client stays."""

    server: DripServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.open += 1
            self.server.most = max(self.server.most, self.server.open)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", "10000000")
            self.end_headers()
            while not self.server.stopping.wait(1.0):
                self.wfile.write(b"R")
                self.wfile.flush()
        except OSError:
            pass  # Chorus gave up on it: what this server is for
        finally:
            with self.server.lock:
                self.server.open -= 1

    def log_message(self, *_: Any) -> None:
        pass


class DripServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Drip)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.open = self.most = 0


class Loris:
    """``LORIS`` connections that never finish their headers, opened again when closed."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: chorus\r\nX-Slow: " + b"z" * 4000

    def __init__(self, port: int, stop: threading.Event) -> None:
        self.port, self.stop = port, stop
        self.socks: dict[socket.socket, int] = {}  # socket → bytes of HEAD sent
        self.reopened = 0
        self.errors = 0

    def _open(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(self.HEAD[:20])
            self.socks[sock] = 20
        except OSError:
            self.errors += 1

    def _drop(self, sock: socket.socket) -> None:
        del self.socks[sock]
        sock.close()

    def run(self) -> None:
        for _ in range(LORIS):
            self._open()
        while not self.stop.wait(1.0):
            # A closed connection reads as ready (end of file): open another in its place.
            closed, _, _ = select.select(list(self.socks), [], [], 0)
            for sock in closed:
                self._drop(sock)
                self.reopened += 1
            for sock, sent in list(self.socks.items()):
                try:
                    sock.sendall(self.HEAD[sent : sent + 1])
                    self.socks[sock] = sent + 1
                except OSError:
                    self._drop(sock)
            while len(self.socks) < LORIS and not self.stop.is_set():
                self._open()
        for sock in self.socks:
            sock.close()


def _reference_client(n: int, port: int, key: str, url: str, stop: threading.Event) -> Counter[str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    seen: Counter[str] = Counter()
    i = 0
    while not stop.is_set():
        i += 1
        body = json.dumps(
            {
                "model": REF_MODEL,
                "catelogid": CATEGORY,
                "prompt": f"bench slow reference {n}-{i}",
                "lyrics": LYRICS,
                "reference_audio_url": f"{url}/{n}-{i}.wav",
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/v1/music/generations", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            seen[str(response.status)] += 1
            if response.status == 503:
                stop.wait(REFUSED_PAUSE_S)
        except (OSError, http.client.HTTPException):
            seen["error"] += 1
            stop.wait(REFUSED_PAUSE_S)
        finally:
            conn.close()
    return seen


def run_slow_phase(
    sup: Supervisor, stack: Stack, *, seconds: float, use_wrk: bool, workdir: Path
) -> dict[str, Any]:
    reset_jobs(stack)
    load_catalog(stack, "slow", CATALOG)
    settings = load_settings({**stack.env, **PHASE_ENV})
    port = free_port()
    web = start_web(sup, stack, "web-slow", port, PHASE_ENV)
    job_ids = _create_jobs(port, stack.api_key, GET_JOBS)
    targets = job_targets(port, stack.api_key, job_ids)

    drive = prober(sup, "web-slow", workdir, use_wrk, PROBE_CONNECTIONS)

    for target in targets.values():
        drive(target, WARMUP_SECONDS)
    alone = {kind: drive(target, seconds) for kind, target in targets.items()}
    print("    alone: " + rates_line(alone), flush=True)

    drip = DripServer()
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    drip_url = f"http://127.0.0.1:{drip.server_port}"
    stop = threading.Event()
    loris = Loris(port, stop)
    results: list[Counter[str]] = []
    threads = [threading.Thread(target=loris.run, daemon=True)] + [
        threading.Thread(
            target=lambda n=n: results.append(
                _reference_client(n, port, stack.api_key, drip_url, stop)
            ),
            daemon=True,
        )
        for n in range(REFERENCES)
    ]
    for thread in threads:
        thread.start()
    time.sleep(SETTLE_S)
    loris_open = len(loris.socks)
    beside = {kind: drive(target, seconds) for kind, target in targets.items()}
    fetching = drip.open
    print(f"    beside the slow clients: {rates_line(beside)}", flush=True)
    stop.set()
    drip.stopping.set()
    sup.stop("web-slow")
    for thread in threads:
        thread.join(timeout=30)
    drip.shutdown()
    drip.server_close()
    answers = sum(results, Counter())
    reset_jobs(stack)
    return {
        "chorus_command": " ".join(web.argv),
        "env": PHASE_ENV,
        "threads": settings.web_threads,
        "processes": settings.web_workers,
        "fetch_cap": settings.reference_fetch_concurrency,
        "header_timeout_s": settings.request_header_timeout,
        "loris": LORIS,
        "references": REFERENCES,
        "probe_connections": PROBE_CONNECTIONS,
        "seconds": seconds,
        "alone": {k: r.as_dict() for k, r in alone.items()},
        "beside": {k: r.as_dict() for k, r in beside.items()},
        "loris_open_at_start": loris_open,
        "loris_reopened": loris.reopened,
        "loris_errors": loris.errors,
        "fetches_open_at_end": fetching,
        "fetches_most": drip.most,
        "reference_answers": dict(answers),
    }

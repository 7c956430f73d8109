"""Phase (f): ``Prefer: wait`` clients held open by ONE web process, beside POST/GET throughput.

One gunicorn process with Chorus's default thread count, web tier only (no worker, no scheduler):
every job stays QUEUED, so a granted ``Prefer: wait=60`` holds its request the full 60 s, the
worst case for the server. POST and GET throughput are measured first with no waiters, then
again while ``WAIT_MAX_WAITERS`` + ``OVER_CAP`` clients keep a ``Prefer: wait=60`` POST open
(each re-sends as soon as it is answered). The clients over the cap must be answered at once.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.http_phase import WARMUP_SECONDS, _create_jobs, job_targets, say_refusals
from bench.procs import RssSampler, Sampler, Supervisor, free_port
from bench.stack import CATEGORY, LYRICS, MODEL, Stack, reset_jobs, start_web
from config import load_settings
from config.settings import DEFAULT_WEB_THREADS, MAX_WAIT_SECONDS

# One process, Chorus's default threads (the other phases run 8 for 2 processes).
PHASE_ENV = {"WEB_CONCURRENCY": "1", "WEB_THREADS": str(DEFAULT_WEB_THREADS)}
GET_JOBS = 8
# Clients beyond the cap: they show that a request over it is answered at once.
OVER_CAP = 4
# A request still unanswered after this long is being held by the server.
HELD_AFTER_S = 1.0
# A client answered without waiting tries again after this pause, not in a tight loop.
REFUSED_PAUSE_S = 2.0
SETTLE_S = 3.0


@dataclass
class Waiter:
    """One client that keeps a ``Prefer: wait=60`` POST open."""

    n: int
    port: int
    api_key: str
    stop: threading.Event
    sent_at: float | None = None  # monotonic time of the request now open, if any
    answers: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    def run(self) -> None:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.api_key}",
            "Prefer": f"wait={MAX_WAIT_SECONDS}",
        }
        i = 0
        while not self.stop.is_set():
            i += 1
            body = json.dumps(
                {
                    "model": MODEL,
                    "catelogid": CATEGORY,
                    "prompt": f"bench wait {self.n}-{i}: slow ambient",
                    "lyrics": LYRICS,
                }
            )
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=MAX_WAIT_SECONDS + 30)
            began = time.monotonic()
            self.sent_at = began
            try:
                conn.request("POST", "/v1/music/generations", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                applied = response.getheader("Preference-Applied")
                self.answers.append(
                    {
                        "status": response.status,
                        "applied": applied,
                        "seconds": time.monotonic() - began,
                    }
                )
            except (OSError, http.client.HTTPException):
                self.errors += 1
                applied = None
            finally:
                self.sent_at = None
                conn.close()
            if not applied:
                self.stop.wait(REFUSED_PAUSE_S)

    def held(self, now: float) -> bool:
        sent = self.sent_at
        return sent is not None and now - sent >= HELD_AFTER_S


class HeldSampler(Sampler):
    """Counts, twice a second, the clients whose request the server is holding."""

    def __init__(self, waiters: list[Waiter]) -> None:
        super().__init__("held-sampler", 0.5)
        self.waiters = waiters
        self.samples: list[int] = []

    def sample(self) -> None:
        now = time.monotonic()
        self.samples.append(sum(w.held(now) for w in self.waiters))


def run_wait_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    seconds: float,
    connections: int,
    use_wrk: bool,
    workdir: Path,
) -> dict[str, Any]:
    reset_jobs(stack)
    settings = load_settings({**stack.env, **PHASE_ENV})
    cap = settings.wait_max_waiters
    port = free_port()
    web = start_web(sup, stack, "web-wait", port, PHASE_ENV)
    job_ids = _create_jobs(port, stack.api_key, GET_JOBS)
    targets = job_targets(port, stack.api_key, job_ids, " (one process)")

    def drive(target: load.Target, duration: float) -> load.LoadResult:
        result = load.run(target, duration, connections, workdir, use_wrk)
        sup.check_alive(["web-wait"])
        say_refusals(target, result)
        return result

    out: dict[str, Any] = {
        "chorus_command": " ".join(web.argv),
        "env": PHASE_ENV,
        "threads": settings.web_threads,
        "cap": cap,
        "clients": cap + OVER_CAP,
        "wait_s": MAX_WAIT_SECONDS,
        "connections": connections,
        "seconds": seconds,
        "warmup_seconds": WARMUP_SECONDS,
    }
    stop = threading.Event()
    waiters = [Waiter(n, port, stack.api_key, stop) for n in range(cap + OVER_CAP)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in waiters]
    with RssSampler({"web": web.pid}) as rss:
        for target in targets.values():
            drive(target, WARMUP_SECONDS)
        alone = {kind: drive(target, seconds) for kind, target in targets.items()}
        print(
            "    no waiters: "
            + ", ".join(f"{k.upper()} {r.rps:,.0f} req/s" for k, r in alone.items()),
            flush=True,
        )
        for thread in threads:
            thread.start()
        time.sleep(SETTLE_S)
        with HeldSampler(waiters) as held:
            beside: dict[str, load.LoadResult] = {}
            for kind, target in targets.items():
                beside[kind] = drive(target, seconds)
        stop.set()
        sup.stop("web-wait")  # ends the open waits: nothing more to learn from them
        for thread in threads:
            thread.join(timeout=10)
    samples = held.samples or [0]
    answers = [a for w in waiters for a in w.answers]
    out.update(
        {
            "alone": {k: r.as_dict() for k, r in alone.items()},
            "with_waiters": {k: r.as_dict() for k, r in beside.items()},
            "ratio": {k: beside[k].rps / alone[k].rps if alone[k].rps else None for k in targets},
            "held_min": min(samples),
            "held_max": max(samples),
            "held_samples": len(samples),
            # Answered while the measurement ran: a held wait answers only after 60 s.
            "refused_at_once": sum(1 for a in answers if not a["applied"]),
            "refused_max_s": max((a["seconds"] for a in answers if not a["applied"]), default=None),
            "waited_answers": sum(1 for a in answers if a["applied"]),
            "client_errors": sum(w.errors for w in waiters),
            "peak_rss_mb": rss.peaks_mb()["web"],
        }
    )
    print(
        f"    {out['held_min']}–{out['held_max']} waits held (cap {cap}, {out['clients']} "
        "clients): "
        + ", ".join(
            f"{k.upper()} {r.rps:,.0f} req/s (× {out['ratio'][k] or 0:.2f})"
            for k, r in beside.items()
        ),
        flush=True,
    )
    reset_jobs(stack)
    return out

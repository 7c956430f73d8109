"""Phase (k): the API's POST and GET throughput with metrics and JSON logs on beside off.

Two web processes of the same shape as (a)'s run side by side: one as the production shapes
run it, metrics on (its samples written to files as ``chorus web`` makes every process do, a
folder bound under METRICS_DIR) and its lines in JSON (``LOG_FORMAT=json``), one with
``METRICS_ENABLED=false`` and plain lines. Each load is run on one, then the other,
``rounds`` times over (first one, then the other, going first); the figures are each side's
median round.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app import metrics
from bench import load
from bench.http_phase import _create_jobs, _post_body, median_figures, metered_run, say_refusals
from bench.procs import Supervisor, free_port
from bench.stack import Stack, reset_jobs, start_web

SIDES = ("on", "off")
WARMUP_SECONDS = 3.0


def run_metrics_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    seconds: float,
    connections: int,
    use_wrk: bool,
    workdir: Path,
    rounds: int = 3,
) -> dict[str, Any]:
    ports = {side: free_port() for side in SIDES}
    on: dict[str, str] = {"METRICS_ENABLED": "true", "METRICS_TOKEN": "bench", "LOG_FORMAT": "json"}
    metrics.bind(workdir / "metrics", "web", on)
    extra = {"on": on, "off": {"METRICS_ENABLED": "false", "LOG_FORMAT": "plain"}}
    webs = {side: start_web(sup, stack, f"web-{side}", ports[side], extra[side]) for side in SIDES}
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    job_ids = _create_jobs(ports["on"], stack.api_key, 8)
    targets = {
        kind: {
            side: load.Target(
                f"{kind.upper()} metrics {side}",
                ports[side],
                "POST" if kind == "post" else "GET",
                ["/v1/music/generations"]
                if kind == "post"
                else [f"/v1/music/generations/{i}" for i in job_ids],
                {**auth, "Content-Type": "application/json"} if kind == "post" else auth,
                _post_body() if kind == "post" else None,
            )
            for side in SIDES
        }
        for kind in ("post", "get")
    }
    dbname = str(make_url(stack.database_url).database)

    def drive(target: load.Target, duration: float) -> tuple[load.LoadResult, dict[str, float]]:
        side = "on" if target.port == ports["on"] else "off"
        result, used = metered_run(
            target, duration, connections, workdir, use_wrk, webs[side].pid, dbname
        )
        sup.check_alive([f"web-{s}" for s in SIDES])
        say_refusals(target, result)
        return result, used

    out: dict[str, Any] = {
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "warmup_seconds": WARMUP_SECONDS,
    }
    for pair in targets.values():
        for target in pair.values():
            drive(target, WARMUP_SECONDS)
    for kind, pair in targets.items():
        runs: dict[str, list[tuple[load.LoadResult, dict[str, float]]]] = {s: [] for s in SIDES}
        for round_ in range(rounds):
            # Each side goes first every other round: a slowdown of the shared host that
            # lasts a while then weighs on both alike.
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                runs[side].append(drive(pair[side], seconds))
                time.sleep(1.0)
        out[kind] = {side: median_figures(rs) for side, rs in runs.items()}
        off = out[kind]["off"]["rps"]
        out[kind]["ratio"] = out[kind]["on"]["rps"] / off if off else None
        print(
            f"    {kind.upper()}: on {out[kind]['on']['rps']:,.0f} req/s | off {off:,.0f} req/s"
            f" | on ÷ off {out[kind]['ratio'] or 0:.3f}",
            flush=True,
        )
    for side in SIDES:
        sup.stop(f"web-{side}")
    # The jobs this phase created (QUEUED, never run) must not meet a later phase; nor may
    # what they hang on to from earlier phases (webhook deliveries, events).
    reset_jobs(stack)
    return out

"""Phases (a) and (b): Chorus's web tier beside a bare Flask app under the same gunicorn.

Only the web tier runs (no worker, no scheduler), so the figures are the API's own cost: key check,
validation, catalog lookup and the INSERT for a POST; key check and a primary-key read for a GET.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench import bare as bare_app
from bench import load
from bench.procs import (
    CpuMeter,
    PhaseError,
    RssSampler,
    Supervisor,
    free_port,
    pids_named,
    postgres_backends,
    proc_table,
    tree_pids,
    wait_http,
)
from bench.stack import CATEGORY, LYRICS, MODEL, Stack, bare_command, reset_jobs, start_web
from bench.stats import median_item

# The servers of phases (a)/(b): Chorus, the bare app doing the same durable work, and the
# bare app doing no I/O at all.
SIDES = ("chorus", "bare", "bare_noio")

# A few existing jobs for the GETs: enough that every read is not the same cached row.
GET_JOBS = 8
WARMUP_SECONDS = 3.0


def _post_body() -> str:
    # load.N_MARK becomes "<thread>-<n>": every POST carries a distinct prompt, as real ones do.
    return json.dumps(
        {
            "model": MODEL,
            "catelogid": CATEGORY,
            "prompt": f"bench http {load.N_MARK}: upbeat pop, sunny day",
            "lyrics": LYRICS,
        }
    )


def _create_bare_rows(port: int, count: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ids = []
    try:
        for i in range(count):
            body = _post_body().replace(load.N_MARK, f"get-{i}")
            conn.request("POST", "/bare", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            if response.status != 202:
                raise PhaseError(f"bare POST answered {response.status}: {payload}")
            ids.append(payload["id"])
    finally:
        conn.close()
    return ids


def _create_jobs(port: int, api_key: str, count: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    ids = []
    try:
        for i in range(count):
            body = _post_body().replace(load.N_MARK, f"get-{i}")
            conn.request("POST", "/v1/music/generations", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 202:
                raise PhaseError(f"creating a job for the GETs answered HTTP {response.status}")
            ids.append(json.loads(data)["id"])
    finally:
        conn.close()
    return ids


def job_targets(
    port: int, api_key: str, job_ids: list[str], note: str = ""
) -> dict[str, load.Target]:
    """Chorus's POST (a fresh prompt each) and GET (cycling over ``job_ids``) as load targets."""
    auth = {"Authorization": f"Bearer {api_key}"}
    return {
        "post": load.Target(
            f"Chorus POST /v1/music/generations{note}",
            port,
            "POST",
            ["/v1/music/generations"],
            {**auth, "Content-Type": "application/json"},
            _post_body(),
        ),
        "get": load.Target(
            f"Chorus GET /v1/music/generations/{{id}}{note}",
            port,
            "GET",
            [f"/v1/music/generations/{i}" for i in job_ids],
            auth,
        ),
    }


def _sample(target: load.Target) -> str:
    """Status and body of one request like the load's, to show why answers were refused."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        conn.request(
            target.method, target.paths[0], body=target.body_for(0, 0), headers=target.headers
        )
        response = conn.getresponse()
        return f"HTTP {response.status}: {response.read()[:500]!r}"
    except (OSError, http.client.HTTPException) as exc:
        return repr(exc)
    finally:
        conn.close()


def _generator_cpu() -> float:
    """CPU seconds of this process and its waited-for children (wrk runs as one)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def metered_run(
    target: load.Target,
    duration: float,
    connections: int,
    workdir: Path,
    use_wrk: bool,
    server: int,
    dbname: str,
) -> tuple[load.LoadResult, dict[str, float]]:
    """A load run on ``target``, and where the CPU went meanwhile: the process tree of
    ``server``, its Postgres backends (of ``dbname``), Redis (the rate limiter keeps its
    counters there: part of Chorus's cost), the load generator, and anything else on the
    machine (other people's processes show up there)."""
    meter = CpuMeter(
        {
            "server": lambda: tree_pids(server, proc_table()),
            "postgres": lambda: postgres_backends(dbname),
            "redis": lambda: pids_named("redis-server"),
        }
    )
    before = _generator_cpu()
    meter.start()
    result = load.run(target, duration, connections, workdir, use_wrk)
    used = meter.stop()
    used["generator"] = _generator_cpu() - before
    measured = ("server", "postgres", "redis", "generator", "interrupts", "steal")
    used["other"] = used["machine_busy"] - sum(used[k] for k in measured)
    return result, used


def prober(
    sup: Supervisor, web: str, workdir: Path, use_wrk: bool, connections: int
) -> Callable[[load.Target, float], load.LoadResult]:
    """A load run against the process ``web`` that checks it outlived the run and says, loudly,
    what it refused: the probe of the phases that measure the API beside something else."""

    def drive(target: load.Target, duration: float) -> load.LoadResult:
        result = load.run(target, duration, connections, workdir, use_wrk)
        sup.check_alive([web])
        say_refusals(target, result)
        return result

    return drive


def rates_line(results: dict[str, load.LoadResult]) -> str:
    """POST and GET latency and rate, on one line of progress."""
    return ", ".join(
        f"{k.upper()} p50 {r.p50_ms or 0:.1f} ms, p99 {r.p99_ms or 0:.1f} ms, {r.rps:,.0f} req/s"
        for k, r in results.items()
    )


def say_refusals(target: load.Target, result: load.LoadResult) -> None:
    """Print, loudly, any refused answers or socket errors of a run, with one such answer."""
    if result.non_2xx or result.socket_errors:
        print(
            f"\n  !!! {target.label}: {result.non_2xx} non-2xx answers and "
            f"{result.socket_errors} socket errors out of {result.requests} requests !!!\n",
            flush=True,
        )
        print(f"  one answer to the same request: {_sample(target)}", flush=True)


def _per_request(used: dict[str, float], result: load.LoadResult) -> dict[str, float]:
    """CPU seconds per group, CPU ms per request, and how busy the machine's cores were."""
    n = max(result.requests, 1)
    cores = os.cpu_count() or 1
    out = {f"{k}_s": v for k, v in used.items()}
    out.update(
        {
            f"{k}_ms_per_request": v * 1000 / n
            for k, v in used.items()
            if k not in ("wall", "machine_busy", "steal")
        }
    )
    out["machine_busy_pct"] = 100 * used["machine_busy"] / max(used["wall"] * cores, 1e-9)
    return out


def median_figures(runs: list[tuple[load.LoadResult, dict[str, float]]]) -> dict[str, Any]:
    """A server's figures from its rounds: its median round (by req/s) with that round's CPU,
    and every round's req/s and faults."""
    result, used = median_item(runs, key=lambda r: r[0].rps)
    return {
        **result.as_dict(),
        "cpu": _per_request(used, result),
        "rps_rounds": [r.rps for r, _ in runs],
        "faults_all_rounds": sum(r.non_2xx + r.socket_errors for r, _ in runs),
    }


def run_http_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    seconds: float,
    connections: int,
    use_wrk: bool,
    workdir: Path,
    rounds: int = 3,
) -> dict[str, Any]:
    """Chorus beside the bare app. Each endpoint's three servers are measured in turn,
    ``rounds`` times over; each figure is the server's median round (by req/s), and the
    ratio is of the medians: on a shared machine one 15-second measurement can land in a
    slowdown of the host."""
    chorus_port, bare_port = free_port(), free_port()
    web = start_web(sup, stack, "web-http", chorus_port, {})
    bare_app.create_table(stack.database_url)
    bare = sup.start("bare", bare_command(web.argv, bare_port), {"PORT": str(bare_port)})
    wait_http(bare_port, "/bare/ping", bare)
    job_ids = _create_jobs(chorus_port, stack.api_key, GET_JOBS)
    bare_ids = _create_bare_rows(bare_port, GET_JOBS)

    auth = {"Authorization": f"Bearer {stack.api_key}"}
    post_headers = {**auth, "Content-Type": "application/json"}
    pairs = {
        "post": (
            load.Target(
                "Chorus POST /v1/music/generations",
                chorus_port,
                "POST",
                ["/v1/music/generations"],
                post_headers,
                _post_body(),
            ),
            load.Target(
                "bare POST /bare", bare_port, "POST", ["/bare"], post_headers, _post_body()
            ),
            load.Target(
                "bare, no I/O, POST /bare/noio",
                bare_port,
                "POST",
                ["/bare/noio"],
                post_headers,
                _post_body(),
            ),
        ),
        "get": (
            load.Target(
                "Chorus GET /v1/music/generations/{id}",
                chorus_port,
                "GET",
                [f"/v1/music/generations/{i}" for i in job_ids],
                auth,
            ),
            load.Target(
                "bare GET /bare/{id}", bare_port, "GET", [f"/bare/{i}" for i in bare_ids], auth
            ),
            load.Target(
                "bare, no I/O, GET /bare/noio/{id}",
                bare_port,
                "GET",
                [f"/bare/noio/{i}" for i in job_ids],
                auth,
            ),
        ),
    }

    dbname = str(make_url(stack.database_url).database)
    servers = {chorus_port: web.pid, bare_port: bare.pid}

    def drive(target: load.Target, duration: float) -> tuple[load.LoadResult, dict[str, float]]:
        result, used = metered_run(
            target, duration, connections, workdir, use_wrk, servers[target.port], dbname
        )
        sup.check_alive(["web-http", "bare"])
        say_refusals(target, result)
        return result, used

    out: dict[str, Any] = {
        "chorus_command": " ".join(web.argv),
        "bare_command": " ".join(bare.argv),
        "connections": connections,
        "seconds": seconds,
        "warmup_seconds": WARMUP_SECONDS,
        "get_job_ids": len(job_ids),
        "rounds": rounds,
    }
    with RssSampler({"chorus_web": web.pid, "bare_web": bare.pid}) as sampler:
        for target in (t for pair in pairs.values() for t in pair):
            drive(target, WARMUP_SECONDS)  # warm-up: imports, pools, JIT-less caches
        for kind, targets in pairs.items():
            runs: dict[str, list[tuple[load.LoadResult, dict[str, float]]]] = {
                side: [] for side in SIDES
            }
            for _ in range(rounds):
                # Back to back, with a short pause to let sockets settle.
                for side, target in zip(SIDES, targets, strict=True):
                    runs[side].append(drive(target, seconds))
                    time.sleep(1.0)
            results = {
                side: median_item(rs, key=lambda r: r[0].rps)[0] for side, rs in runs.items()
            }
            out[kind] = {side: median_figures(rs) for side, rs in runs.items()}
            chorus_rps = results["chorus"].rps
            # The target's ratio is against the bare app doing the same durable work.
            out[kind]["rps_ratio"] = (
                chorus_rps / results["bare"].rps if results["bare"].rps else None
            )
            out[kind]["rps_ratio_noio"] = (
                chorus_rps / results["bare_noio"].rps if results["bare_noio"].rps else None
            )
            print(
                f"    {kind.upper()}: "
                + " | ".join(
                    f"{side} {r.rps:,.0f} req/s (p50 {r.p50_ms or 0:.1f} ms, "
                    f"p99 {r.p99_ms or 0:.1f} ms)"
                    for side, r in results.items()
                )
                + f" | ratio {out[kind]['rps_ratio']:.2f} (no-I/O {out[kind]['rps_ratio_noio']:.2f})",
                flush=True,
            )
    out["peak_rss_mb"] = sampler.peaks_mb()
    sup.stop("bare")
    sup.stop("web-http")
    # The jobs this phase created (QUEUED, never run) must not meet phase (c).
    with stack.database().engine.begin() as conn:
        out["jobs_created"] = int(conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one())
    reset_jobs(stack)
    return out

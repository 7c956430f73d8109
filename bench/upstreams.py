"""Phase (d): the upstream protocols under load (issue [upstreams]). This module holds the
phase's catalog, the readings of the ``jobs`` table both parts share, and (d1); (d2), useapi
throughput with K accounts, is ``bench/useapi.py``.

(d1) MiniMax's calls are synchronous: each holds a connection open until the song is made, and
Chorus hands them to a separate thread-pool worker (``chorus worker --sync``, queue
``chorus.sync``) so they never take the slots that submit and poll every other job. Measured
as the completion time of a batch of AIMLAPI-protocol jobs alone, and again while 100 MiniMax
calls are held open for the whole batch; the ratio should stay near 1.

Both read Chorus's side from the ``jobs`` table and the upstream's from the simulator's record,
as phase (c) does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from bench.client import Connections, SubmitResult, sim_reset, sim_summary, submit_jobs, ts
from bench.procs import (
    CpuMeter,
    PhaseError,
    Supervisor,
    cpu_summary,
    own_pid,
    pids_named,
    postgres_backends,
    tree_of,
)
from bench.stack import (
    CATEGORY,
    Stack,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_sync_worker,
    start_web,
    start_worker,
    wait_worker_ready,
)
from bench.stats import describe, median_item

HOLD_MODEL = "mm-hold"
FAST_MODEL = "fast"
# The batch takes about submit time + FAST_LATENCY; the held calls outlast it many times over,
# so every one of them is open from before the second batch's first submit to after its last job.
FAST_LATENCY = 10.0
HOLD_LATENCY = 120.0
USEAPI_LATENCY = 5.0
# The simulator's latency is fixed per job by the marker, so the catalog's window is narrow:
# half a second covers the gap between Chorus's clock (started_at) and the simulator's.
SPREAD = 0.5
# Accounts declared for (d2); a run uses the first K of them.
USEAPI_ACCOUNTS = 8
MINIMAX_KEY_ENV = "BENCH_MINIMAX_KEY"
USEAPI_KEY_ENV = "BENCH_USEAPI_KEY"

# Set only for this phase's processes (the other phases keep their environment as it was):
# - SIM_THREADS bounds the MiniMax calls the simulator can hold open at once (one thread each),
#   so 100 held calls need well over 100 threads, the rest serving the other jobs' polls;
# - SYNC_CONCURRENCY is the sync worker's thread pool: one thread per held call, and more;
# - the simulator answers MiniMax and useapi only with a bearer key (any non-empty one).
PHASE_ENV: dict[str, str] = {
    "SIM_THREADS": "256",
    "SYNC_CONCURRENCY": "128",
    MINIMAX_KEY_ENV: "bench-minimax-key",
    USEAPI_KEY_ENV: "user:1-bench",
}

LIMITS: dict[str, Any] = {
    "prompt": {"min": 0, "max": 2000},
    "lyrics": {"min": 1, "max": 3500},
    "reference_audio": "none",
}


def useapi_model(k: int) -> str:
    return f"useapi-k{k}"


def _model(name: str, upstream: str, expected: float, accounts: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "upstream_model": upstream,
        "expected_seconds": expected,
        "expected_spread": SPREAD,
        "deadline_seconds": 900,
        "limits": LIMITS,
        "routes": [{"category": CATEGORY, "accounts": accounts}],
    }


def catalog(ks: list[int]) -> str:
    """The phase's accounts and models (YAML), upserted beside the bench catalog."""
    sim = "{sim_url}"  # the loader's placeholder, filled with SIM_URL when a job is sent
    useapi = [f"bench-useapi-{i}" for i in range(1, max([*ks, USEAPI_ACCOUNTS]) + 1)]
    accounts: list[dict[str, Any]] = [
        {
            "id": "bench-minimax",
            "provider": "minimax",
            "base_url": sim,
            "credential_env": MINIMAX_KEY_ENV,
            "max_in_flight": 200,
            "read_timeout": 600,
        },
        {"id": "bench-fast", "provider": "aimlapi", "base_url": sim, "max_in_flight": 100000},
    ]
    accounts += [
        {
            "id": account,
            "provider": "useapi",
            "base_url": sim,
            "credential_env": USEAPI_KEY_ENV,
            "upstream_account": f"bench-account-{i}",
            "max_in_flight": 1,
            "read_timeout": 60,
        }
        for i, account in enumerate(useapi, start=1)
    ]
    models = [
        _model(HOLD_MODEL, "music-2.0", HOLD_LATENCY, ["bench-minimax"]),
        _model(FAST_MODEL, "minimax/music-2.6", FAST_LATENCY, ["bench-fast"]),
    ]
    models += [_model(useapi_model(k), "music-1.5", USEAPI_LATENCY, useapi[:k]) for k in ks]
    return yaml.safe_dump({"accounts": accounts, "models": models}, sort_keys=False)


# ------------------------------------------------------------------ reading the jobs table


def _rows(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    query = sa.text(
        "SELECT id, status, error_code, generation_id, account_id, created_at, started_at, "
        "finished_at FROM jobs WHERE id = ANY(:ids)"
    )
    with stack.database().engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query, {"ids": ids})]


def wait_done(
    sup: Supervisor, stack: Stack, ids: list[str], deadline: float, label: str
) -> list[dict[str, Any]]:
    """The jobs' rows once none of them is active, or at ``deadline`` (unix time)."""
    last_print = time.time()
    while True:
        rows = _rows(stack, ids)
        counts = Counter(str(r["status"]) for r in rows)
        active = counts.get("QUEUED", 0) + counts.get("RUNNING", 0)
        now = time.time()
        if active == 0 or now >= deadline:
            return rows
        if now - last_print >= 10:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"    {time.strftime('%H:%M:%S')}  {label}: {shown}", flush=True)
            last_print = now
        sup.check_alive()
        time.sleep(0.5)


def completion_s(submit: SubmitResult, rows: list[dict[str, Any]]) -> float | None:
    """First submit → the last job's finished_at, when every job finished."""
    finishes = [ts(r["finished_at"]) for r in rows]
    if not rows or any(f is None for f in finishes):
        return None
    return max(f for f in finishes if f is not None) - submit.started


def outcome_of(rows: list[dict[str, Any]], accepted: int) -> dict[str, Any]:
    statuses = Counter(
        f"{r['status']}" + (f":{r['error_code']}" if r["error_code"] else "") for r in rows
    )
    succeeded = statuses.get("SUCCEEDED", 0)
    return {
        "succeeded": succeeded,
        "statuses": dict(statuses),
        # Not SUCCEEDED, or accepted and never seen in the table.
        "lost": accepted - succeeded,
    }


def _minimax_open(port: int) -> tuple[int, int]:
    """MiniMax calls open at the simulator now, and the peak it has seen."""
    accounts = sim_summary(port).get("accounts", [])
    mm = [a for a in accounts if a["protocol"] == "minimax"]
    return sum(a["in_flight"] for a in mm), max((a["max_concurrent"] for a in mm), default=0)


def _meter(sup: Supervisor, stack: Stack) -> CpuMeter:
    """CPU of every process of the stack, Postgres, Redis and the harness, over a window."""
    groups: dict[str, Callable[[], list[int]]] = {
        name: tree_of(child.pid) for name, child in sup.children.items()
    }
    dbname = str(make_url(stack.database_url).database)
    groups["postgres"] = lambda: postgres_backends(dbname)
    groups["redis"] = lambda: pids_named("redis-server")
    groups["harness"] = own_pid
    return CpuMeter(groups)


# ------------------------------------------------------------------ (d1) held MiniMax calls


def _fast_batch(
    sup: Supervisor,
    stack: Stack,
    *,
    web_port: int,
    count: int,
    clients: int,
    tag: str,
    latency: float = FAST_LATENCY,
) -> dict[str, Any]:
    """Submit ``count`` AIMLAPI-protocol jobs of ``latency`` s each and wait for all of them."""
    meter = _meter(sup, stack)
    meter.start()
    submit = submit_jobs(
        web_port,
        stack.api_key,
        count,
        tag,
        clients,
        model=FAST_MODEL,
        marker=f" [sim:latency={latency:g}]",
    )
    if submit.failures:
        print(f"  !!! {tag}: POSTs failed {dict(submit.failures)}: {submit.failure_sample}")
    ids = list(submit.accepted.values())
    rows = wait_done(sup, stack, ids, submit.ended + latency + 120.0, tag)
    cpu = cpu_summary(meter.stop())
    completion = completion_s(submit, rows)
    finished = [r for r in rows if r["finished_at"] is not None and r["started_at"] is not None]
    print(
        f"    {tag}: {len(ids)} jobs submitted in {submit.seconds:.1f}s, all finished "
        f"{completion or 0:.2f}s after the first submit",
        flush=True,
    )
    return {
        "jobs": count,
        "accepted": len(ids),
        "submit_failures": dict(submit.failures),
        "submit_seconds": submit.seconds,
        "submit_latency_ms": describe(submit.latencies_ms),
        "completion_s": completion,
        # Submit → RUNNING (the upstream has it) and RUNNING → finished, per job.
        "queued_s": describe(
            [(r["started_at"] - r["created_at"]).total_seconds() for r in finished]
        ),
        "running_s": describe(
            [(r["finished_at"] - r["started_at"]).total_seconds() for r in finished]
        ),
        "cpu_s": cpu,
        **outcome_of(rows, len(ids)),
    }


def _wait_open_calls(sup: Supervisor, stack: Stack, want: int, timeout: float) -> float:
    """Seconds until the simulator holds ``want`` MiniMax calls open; fails after ``timeout``."""
    began = time.monotonic()
    seen = 0
    while time.monotonic() - began < timeout:
        seen, _ = _minimax_open(stack.sim_port)
        if seen >= want:
            return time.monotonic() - began
        sup.check_alive()
        time.sleep(0.5)
    raise PhaseError(
        f"only {seen} of {want} MiniMax calls were open at the simulator after {timeout:.0f}s; "
        "the sync worker is not holding them"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose completion time is the median (the upper one of an even count); a run
    that did not finish counts as the slowest."""
    return median_item(runs, key=lambda r: r["completion_s"] or float("inf"))


def run_held_calls(
    sup: Supervisor,
    stack: Stack,
    *,
    web_port: int,
    batch: int,
    hold: int,
    clients: int,
    repeats: int,
) -> dict[str, Any]:
    """(d1): the AIMLAPI batch ``repeats`` times alone, then ``repeats`` times beside ``hold``
    MiniMax calls held open; judged on the ratio of the median completion times."""
    reset_jobs(stack)
    started = time.time()
    start_sim(sup, stack, PHASE_ENV)
    sim_reset(stack.sim_port)
    start_web(sup, stack, "web", web_port, PHASE_ENV)
    start_worker(sup, stack, PHASE_ENV)
    start_sync_worker(sup, stack, PHASE_ENV)
    start_scheduler(sup, stack, PHASE_ENV)
    wait_worker_ready(sup, stack, sync=True)
    print(f"    stack up in {time.time() - started:.1f}s (with the sync worker)", flush=True)
    out: dict[str, Any] = {
        "batch": batch,
        "hold": hold,
        "repeats": repeats,
        "fast_latency_s": FAST_LATENCY,
        "hold_latency_s": HOLD_LATENCY,
        "settings": dict(PHASE_ENV),
    }
    # A short warm-up batch first: the first jobs after a start pay for connection pools and
    # lazy imports, which would flatter the ratio by slowing the "alone" batch only.
    out["warmup"] = _fast_batch(
        sup, stack, web_port=web_port, count=clients, clients=clients, tag="warm-up", latency=1.0
    )
    with Connections(stack.database_url) as connections:
        # Several batches per side, judged on the median: on a shared 2-core machine one batch
        # of ~12 s can meet someone else's burst of CPU, and the target's margin is only 10 %.
        out["alone_runs"] = [
            _fast_batch(
                sup, stack, web_port=web_port, count=batch, clients=clients, tag=f"alone #{i}"
            )
            for i in range(1, repeats + 1)
        ]
        held = submit_jobs(
            web_port,
            stack.api_key,
            hold,
            "hold",
            clients,
            model=HOLD_MODEL,
            marker=f" [sim:latency={HOLD_LATENCY:g}]",
        )
        if len(held.accepted) != hold:
            raise PhaseError(f"only {len(held.accepted)} of {hold} MiniMax jobs were accepted")
        out["hold_open_after_s"] = _wait_open_calls(sup, stack, hold, timeout=60.0)
        print(
            f"    {hold} MiniMax calls open {out['hold_open_after_s']:.1f}s after their "
            "submit; the batches again",
            flush=True,
        )
        # Open calls counted before and after every batch: the figure holds only if all of
        # them stayed open from the first batch's first submit to the last one's last job.
        open_seen = [_minimax_open(stack.sim_port)[0]]
        out["with_hold_runs"] = []
        for i in range(1, repeats + 1):
            out["with_hold_runs"].append(
                _fast_batch(
                    sup,
                    stack,
                    web_port=web_port,
                    count=batch,
                    clients=clients,
                    tag=f"beside held calls #{i}",
                )
            )
            open_seen.append(_minimax_open(stack.sim_port)[0])
        out["open_calls_before"], out["open_calls_after"] = open_seen[0], open_seen[-1]
        out["open_calls_min"] = min(open_seen)
        out["minimax_max_concurrent"] = _minimax_open(stack.sim_port)[1]
    out["pg_connections"] = connections.as_dict()
    out["alone"] = _median_run(out["alone_runs"])
    out["with_hold"] = _median_run(out["with_hold_runs"])
    # The held calls outlived the batches by design; what became of them is only reported.
    hold_rows = _rows(stack, list(held.accepted.values()))
    out["hold_statuses"] = dict(Counter(str(r["status"]) for r in hold_rows))
    out["log_errors"] = {
        n: sup.log_errors(n) for n in ("worker", "sync", "web", "scheduler", "sim")
    }
    alone, beside = out["alone"]["completion_s"], out["with_hold"]["completion_s"]
    out["ratio"] = beside / alone if alone and beside else None
    for name in ("scheduler", "sync", "worker", "web", "sim"):
        # The sync worker would wait for its held calls on a warm shutdown: no need to.
        sup.stop(name, grace=3.0 if name == "sync" else 10.0)
    reset_jobs(stack)
    return out

"""Phase (c): N jobs in flight end to end against the simulator, measured from both sides.

Chorus's side is read straight from the ``jobs`` table (never through the API, which would add
load and hide nothing); the upstream's side comes from the simulator's record, which knows when
each generation really became ready and how often it was asked about.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.client import Connections, SubmitResult, sim_reset, sim_summary, submit_jobs, ts
from bench.procs import (
    CpuMeter,
    RssSampler,
    Supervisor,
    cpu_summary,
    own_pid,
    pids_named,
    postgres_backends,
    tree_of,
)
from bench.stack import (
    SIM_JITTER,
    SIM_LATENCY,
    Stack,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_web,
    start_worker,
    wait_worker_ready,
)
from bench.stats import describe, mean, percentile

ACTIVE = ("QUEUED", "RUNNING")
# After the last submit: the slowest generation (latency + jitter) plus generous slack.
DEFAULT_WAIT_TIMEOUT = SIM_LATENCY + SIM_JITTER + 300.0


def status_counts(stack: Stack) -> dict[str, int]:
    with stack.database().engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    return {str(status): int(n) for status, n in rows}


def wait_terminal(
    sup: Supervisor, stack: Stack, deadline: float, expected: int
) -> tuple[dict[str, int], bool]:
    """Read the table once a second until no job is active or ``deadline`` (unix time) passes."""
    last_print = 0.0
    while True:
        counts = status_counts(stack)
        active = sum(counts.get(s, 0) for s in ACTIVE)
        now = time.time()
        if now - last_print >= 10:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"    {time.strftime('%H:%M:%S')}  {shown}  (of {expected})", flush=True)
            last_print = now
        if active == 0 and sum(counts.values()) >= expected:
            return counts, True
        if now >= deadline:
            return counts, False
        sup.check_alive()
        time.sleep(1.0)


# What Postgres counted for the bench database (``pg_stat_database``): transactions and rows.
DB_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_fetched",
)


def db_counters(stack: Stack) -> dict[str, int]:
    """The counters now. A backend reports its counts when it ends (and about once a second
    while busy), so they are read after Chorus's processes stopped."""
    stats = sa.table("pg_stat_database", sa.column("datname"), *map(sa.column, DB_COUNTERS))
    query = sa.select(*(stats.c[k] for k in DB_COUNTERS)).where(
        stats.c.datname == sa.func.current_database()
    )
    with stack.database().engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return dict(zip(DB_COUNTERS, (int(v) for v in conn.execute(query).one()), strict=True))


def job_rows(stack: Stack) -> list[dict[str, Any]]:
    query = sa.text(
        "SELECT id, status, error_code, error_message, generation_id, poll_count, "
        "submit_attempts, created_at, started_at, finished_at FROM jobs"
    )
    with stack.database().engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def run_jobs_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    mode: str,
    count: int,
    web_port: int,
    clients: int,
    extra: dict[str, str],
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
) -> dict[str, Any]:
    """One end-to-end run of ``count`` jobs with the poll settings in ``extra``."""
    reset_jobs(stack)
    counted = db_counters(stack)
    started = time.time()
    sim = start_sim(sup, stack)
    sim_reset(stack.sim_port)
    web = start_web(sup, stack, "web", web_port, extra)
    worker = start_worker(sup, stack, extra)
    scheduler = start_scheduler(sup, stack, extra)
    wait_worker_ready(sup, stack)
    print(f"    stack up in {time.time() - started:.1f}s; submitting {count} jobs", flush=True)

    targets = {"worker": worker.pid, "web": web.pid, "sim": sim.pid, "scheduler": scheduler.pid}
    dbname = str(make_url(stack.database_url).database)
    groups: dict[str, Callable[[], list[int]]] = {
        name: tree_of(pid) for name, pid in targets.items()
    }
    groups["postgres"] = lambda: postgres_backends(dbname)
    groups["redis"] = lambda: pids_named("redis-server")  # the Celery broker
    groups["harness"] = own_pid  # the submitting client threads and the samplers
    meter = CpuMeter(groups)
    meter.start()
    with RssSampler(targets) as sampler, Connections(stack.database_url) as connections:
        submit = submit_jobs(web_port, stack.api_key, count, mode, clients)
        print(
            f"    submitted {len(submit.accepted)} in {submit.seconds:.1f}s "
            f"({len(submit.accepted) / max(submit.seconds, 1e-9):.0f}/s)"
            + (f"; FAILURES {dict(submit.failures)}" if submit.failures else ""),
            flush=True,
        )
        if submit.failures:
            # Loud: a refused POST is a job the client lost; show what the web tier said.
            print(
                f"\n  !!! {sum(submit.failures.values())} POSTs failed: {dict(submit.failures)} !!!"
            )
            print(f"  first refusal: {submit.failure_sample}", flush=True)
        deadline = submit.ended + wait_timeout
        counts, finished = wait_terminal(sup, stack, deadline, len(submit.accepted))
        waited = time.time() - submit.ended
    cpu = cpu_summary(meter.stop())
    summary = sim_summary(stack.sim_port)
    rows = job_rows(stack)
    # Faults the processes logged (a database refusing connections, say) explain lost jobs.
    log_errors = {name: sup.log_errors(name) for name in ("worker", "web", "scheduler", "sim")}
    for name, found in log_errors.items():
        if found["error_lines"] or found["exceptions"]:
            print(f"  !!! {name} logged {found['error_lines']} ERROR lines: {found['exceptions']}")
    for name in ("scheduler", "worker", "web", "sim"):
        sup.stop(name)
    time.sleep(1.0)  # the stopped backends' last reports
    database = {k: v - counted[k] for k, v in db_counters(stack).items()}

    figures = analyse(rows, summary, submit, count)
    figures.update(
        mode=mode,
        settings=extra,
        finished_before_timeout=finished,
        hard_timeout_s=wait_timeout,
        waited_after_submit_s=waited,
        final_status_counts=counts,
        peak_rss_mb=sampler.peaks_mb(),
        peak_rss_processes=dict(sampler.peak_procs),
        rss_samples=sampler.samples,
        cpu_s=cpu,
        log_errors=log_errors,
        pg_connections=connections.as_dict(),
        sim_counts=summary.get("counts", {}),
        database=database,
    )
    return figures


def analyse(
    rows: list[dict[str, Any]], summary: dict[str, Any], submit: SubmitResult, requested: int
) -> dict[str, Any]:
    generations: dict[str, dict[str, Any]] = {g["id"]: g for g in summary.get("generations", [])}
    by_job_gen: dict[str, dict[str, Any]] = {}
    for row in rows:
        gen_id = row["generation_id"]
        if gen_id is not None and gen_id in generations:
            by_job_gen[row["id"]] = generations[gen_id]

    # Lost: every job the API accepted that did not end SUCCEEDED (plus POSTs it refused).
    not_succeeded = [r for r in rows if r["status"] != "SUCCEEDED"]
    lost_by = Counter(f"{r['status']}:{r['error_code'] or '-'}" for r in not_succeeded)
    accepted_ids = set(submit.accepted.values())
    missing_rows = len(accepted_ids - {r["id"] for r in rows})

    # Duplicated: a second upstream generation for one job, seen three ways.
    shared_fingerprint = [
        r["id"] for r in rows if r["id"] in by_job_gen and by_job_gen[r["id"]]["submit_count"] > 1
    ]
    matched_gens = {r["generation_id"] for r in rows if r["generation_id"]}
    orphan_gens = [g for g in generations if g not in matched_gens]
    resubmitted = [r["id"] for r in rows if (r["submit_attempts"] or 0) > 1]
    jobs_without_generation = [r["id"] for r in rows if r["generation_id"] is None]

    # Upstream status calls per job: the simulator's count, cross-checked with Chorus's own.
    sim_polls = [float(by_job_gen[r["id"]]["poll_count"]) for r in rows if r["id"] in by_job_gen]
    chorus_polls = [float(r["poll_count"] or 0) for r in rows]

    # Detection lag: when Chorus recorded the job finished, after the upstream had it ready.
    lags: list[float] = []
    seen_lags: list[float] = []  # first poll that saw "completed" (poll lag alone)
    for row in rows:
        gen = by_job_gen.get(row["id"])
        if gen is None or row["status"] != "SUCCEEDED" or gen.get("ready_at") is None:
            continue
        finished = ts(row["finished_at"])
        if finished is not None:
            lags.append(finished - gen["ready_at"])
        if gen.get("first_completed_seen_at") is not None:
            seen_lags.append(gen["first_completed_seen_at"] - gen["ready_at"])

    upstream_times = [
        g["ready_at"] - g["created_at"] for g in generations.values() if g.get("ready_at")
    ]
    finishes = [t for t in (ts(r["finished_at"]) for r in rows) if t is not None]
    slowest = max(upstream_times) if upstream_times else None
    makespan = (max(finishes) - submit.started) if finishes else None
    ideal = (submit.seconds + slowest) if slowest is not None else None
    # Submit-to-upstream delay: the time a job waited in Chorus before the simulator had it.
    to_upstream = [
        by_job_gen[r["id"]]["created_at"] - ts(r["created_at"])
        for r in rows
        if r["id"] in by_job_gen
    ]
    return {
        "jobs_requested": requested,
        "jobs_accepted": len(submit.accepted),
        "submit_failures": dict(submit.failures),
        "submit_failure_sample": submit.failure_sample,
        "submit_seconds": submit.seconds,
        "submit_rate_per_s": len(submit.accepted) / submit.seconds if submit.seconds else None,
        "submit_latency_ms": describe(submit.latencies_ms),
        "jobs_in_table": len(rows),
        "generations": len(generations),
        "makespan_s": makespan,
        "slowest_upstream_s": slowest,
        "ideal_s": ideal,
        "makespan_ratio": (makespan / ideal) if makespan is not None and ideal else None,
        "lost": len(not_succeeded) + missing_rows + sum(submit.failures.values()),
        "lost_by_status": dict(lost_by),
        "lost_examples": [
            {k: r[k] for k in ("id", "status", "error_code", "error_message")}
            for r in not_succeeded[:5]
        ],
        "accepted_but_missing": missing_rows,
        "duplicated": len(shared_fingerprint) + len(orphan_gens) + len(resubmitted),
        "dup_shared_fingerprint": len(shared_fingerprint),
        "dup_orphan_generations": len(orphan_gens),
        "dup_submit_attempts_gt_1": len(resubmitted),
        "jobs_without_generation": len(jobs_without_generation),
        "calls_per_job": {
            "mean": mean(sim_polls),
            "p50": percentile(sim_polls, 50),
            "max": max(sim_polls) if sim_polls else None,
            "total": sum(sim_polls),
        },
        "chorus_poll_count": {
            "mean": mean(chorus_polls),
            "p50": percentile(chorus_polls, 50),
            "max": max(chorus_polls) if chorus_polls else None,
            "total": sum(chorus_polls),
        },
        "lag_s": describe(lags),
        "poll_seen_lag_s": describe(seen_lags),
        "submit_to_upstream_s": describe(to_upstream),
        "upstream_latency_s": describe(upstream_times),
    }

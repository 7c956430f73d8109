"""Phase (j): recovery after ``kill -9`` of the workers with jobs in flight (measured by
``bench/recovery.py``)."""

from __future__ import annotations

import argparse

from bench.phases.base import Context, Phase, Results
from bench.procs import free_port
from bench.recovery import run_recovery_phase
from bench.report import Verdict
from bench.stats import fmt

# The target: every job ends at most this long after the workers are restarted.
RECOVERY_TARGET_S = 45.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recovery-jobs",
        type=int,
        default=500,
        help="(j) jobs in flight when the workers are killed (default 500)",
    )


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(j) recovery: {args.recovery_jobs} jobs, the worker killed (SIGKILL) as the last is "
        "accepted and a new one started at once",
        flush=True,
    )
    figures = run_recovery_phase(
        ctx.sup,
        ctx.stack,
        count=args.recovery_jobs,
        web_port=free_port(),
        clients=args.connections,
        wait_timeout=args.wait_timeout,
    )
    return {"recovery": figures}


def verdicts(results: Results) -> list[Verdict]:
    rec = results.get("recovery")
    if not rec:
        return []
    last = rec["last_end_after_restart_s"]
    ends = rec["end_after_restart_s"]
    unknown = rec["failed_by_code"].get("upstream_unknown", 0)
    twice = rec["submitted_twice"] + max(0, rec["orphan_generations"] - unknown)
    money = rec["ledger_not_one_hold_one_settlement"]
    return [
        Verdict(
            f"(j) last job's end after the workers' restart ({rec['in_flight_at_kill']} in "
            "flight at kill -9)",
            f"{fmt(last, 1)} s (p50 {fmt(ends['p50'], 1)} s, p99 {fmt(ends['p99'], 1)} s)",
            f"≤ {RECOVERY_TARGET_S:g} s",
            rec["finished_before_timeout"] and last is not None and last <= RECOVERY_TARGET_S,
        ),
        Verdict("(j) jobs submitted upstream twice", str(twice), "0", twice == 0),
        Verdict(
            "(j) submits refused by the API",
            str(sum(rec["submit_failures"].values())),
            "0",
            not rec["submit_failures"],
        ),
        Verdict(
            "(j) jobs without exactly one hold and one settlement", str(money), "0", money == 0
        ),
    ]


def section(results: Results) -> list[str]:
    rec = results["recovery"]
    ends = rec["end_after_restart_s"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(rec["final_status_counts"].items()))
    codes = ", ".join(f"`{k}` {v}" for k, v in sorted(rec["failed_by_code"].items())) or "none"
    return [
        f"{rec['jobs']} priced jobs on the simulator's normal duration (its defaults, "
        f"`SIM_LATENCY` {rec['sim_latency_s']:g} s ± {rec['sim_jitter_s']:g} s, not the "
        "other phases' minute); the worker (its main process "
        "and its pool) killed with SIGKILL as soon as the last was accepted, with "
        f"{rec['in_flight_at_kill']} of them still queued or running, and a new worker started "
        f"at once (ready {fmt(rec['worker_ready_after_restart_s'], 1)} s later). Times are "
        "each job's `finished_at` minus the restart, for the jobs the kill caught.",
        "",
        "| last job's end | p50 | p99 | jobs ended after the kill |",
        "|---|---|---|---|",
        f"| {fmt(rec['last_end_after_restart_s'], 1)} s | {fmt(ends['p50'], 1)} s | "
        f"{fmt(ends['p99'], 1)} s | {ends['count']} |",
        "",
        f"Final statuses: {counts}. Failed, by code: {codes} (a job killed inside its submit "
        "may exist upstream: it fails `upstream_unknown` instead of going upstream again). "
        f"Generations submitted twice: {rec['submitted_twice']}; generations of no job: "
        f"{rec['orphan_generations']} (each made by a submit the kill cut off, whose job "
        f"failed `upstream_unknown`); jobs without exactly one hold and one capture or "
        f"release in the ledger: {rec['ledger_not_one_hold_one_settlement']}.",
        "",
    ]


def summary(results: Results) -> list[str]:
    rec = results.get("recovery")
    if not rec:
        return []
    ends = rec["end_after_restart_s"]
    return [
        "-" * 78,
        f"  (j) recovery: last end {rec['last_end_after_restart_s'] or 0:.1f} s after the "
        f"restart (p50 {ends['p50'] or 0:.1f} s, p99 {ends['p99'] or 0:.1f} s); "
        f"{rec['in_flight_at_kill']} in flight at the kill",
    ]


PHASE = Phase(
    name="recovery",
    heading="(j) recovery: kill -9 of the workers with jobs in flight",
    skip_help="skip phase (j) (kill -9 of the workers, then the time until every job ends)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    recorded=("recovery_jobs",),
    summary=summary,
)

"""Phase (d): the upstream protocols, (d1) MiniMax calls held open beside other jobs and (d2)
useapi throughput with K accounts (measured by ``bench/upstreams.py`` and ``bench/useapi.py``)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from app.cli.processes import worker_argv
from bench.phases.base import Context, Phase, Results
from bench.procs import free_port
from bench.report import NO_TARGET, Verdict
from bench.stack import load_catalog
from bench.stats import fmt
from bench.upstreams import (
    FAST_LATENCY,
    HOLD_LATENCY,
    PHASE_ENV,
    USEAPI_LATENCY,
    catalog,
    run_held_calls,
)
from bench.useapi import run_useapi
from config import load_settings

# The targets.
HELD_RATIO_MAX = 1.1  # (d1) AIMLAPI batch beside held MiniMax calls ÷ alone
USEAPI_MAX_CONCURRENT = 1  # (d2) songs at once on one useapi account
SYNC_WORKER = "sync worker ((d) only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstream-batch",
        type=int,
        default=200,
        help="(d1) AIMLAPI jobs per batch, alone and beside the held calls (default 200)",
    )
    parser.add_argument(
        "--hold-jobs",
        type=int,
        default=100,
        help="(d1) MiniMax calls held open during the second batch (default 100)",
    )
    parser.add_argument(
        "--held-repeats",
        type=int,
        default=3,
        help="(d1) batches on each side; the ratio is of the medians (default 3)",
    )
    parser.add_argument(
        "--useapi-accounts",
        default="1,2,4,8",
        help="(d2) comma-separated numbers K of useapi accounts, one run each (default 1,2,4,8)",
    )
    parser.add_argument(
        "--useapi-jobs-per-account",
        type=int,
        default=6,
        help="(d2) jobs per account in each run: N = this x K (default 6)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        args.useapi_accounts = sorted({int(k) for k in args.useapi_accounts.split(",") if k})
    except ValueError:
        parser.error("--useapi-accounts takes numbers separated by commas, e.g. 1,2,4")
    positive = (
        args.upstream_batch,
        args.hold_jobs,
        args.held_repeats,
        args.useapi_jobs_per_account,
        *args.useapi_accounts,
    )
    if not args.useapi_accounts or min(positive) < 1:
        parser.error(
            "--upstream-batch, --hold-jobs, --held-repeats, --useapi-accounts and "
            "--useapi-jobs-per-account must be positive"
        )


def run(ctx: Context) -> Results:
    args, sup, stack = ctx.args, ctx.sup, ctx.stack
    sync_settings = load_settings({**stack.env, **PHASE_ENV})
    ctx.commands[SYNC_WORKER] = shlex.join(worker_argv(sync_settings, sync=True))
    web_port = free_port()
    batch, hold, repeats = args.upstream_batch, args.hold_jobs, args.held_repeats
    ks, per_account = args.useapi_accounts, args.useapi_jobs_per_account
    load_catalog(stack, "upstreams", catalog(ks))
    print(
        f"(d1) upstreams: {repeats} x {batch} AIMLAPI jobs of {FAST_LATENCY:g} s alone, then "
        f"{repeats} x beside {hold} MiniMax calls held open ({HOLD_LATENCY:g} s each)",
        flush=True,
    )
    held = run_held_calls(
        sup,
        stack,
        web_port=web_port,
        batch=batch,
        hold=hold,
        clients=args.connections,
        repeats=repeats,
    )
    print(
        f"(d2) upstreams: useapi with K = {', '.join(map(str, ks))} accounts, "
        f"{per_account}·K jobs of {USEAPI_LATENCY:g} s",
        flush=True,
    )
    useapi = run_useapi(
        sup, stack, web_port=web_port, ks=ks, per_account=per_account, clients=args.connections
    )
    return {"upstreams": {"held_calls": held, "useapi": useapi}}


def verdicts(results: Results) -> list[Verdict]:
    upstreams = results.get("upstreams")
    if not upstreams:
        return []
    out: list[Verdict] = []
    held = upstreams["held_calls"]
    alone, beside = held["alone"], held["with_hold"]
    ratio = held["ratio"]
    # The figure means something only if every call was open from before the first batch
    # beside them to after the last.
    throughout = held["open_calls_min"] >= held["hold"]
    out.append(
        Verdict(
            f"(d1) AIMLAPI batch ({held['batch']} jobs) completion beside {held['hold']} held "
            f"MiniMax calls ÷ alone (medians of {held['repeats']})",
            f"{fmt(ratio, 3)} ({fmt(beside['completion_s'])} s / {fmt(alone['completion_s'])} s"
            + ("" if throughout else "; the calls were NOT all held open throughout")
            + ")",
            f"≤ {HELD_RATIO_MAX}",
            ratio is not None and ratio <= HELD_RATIO_MAX and throughout,
        )
    )
    lost = sum(r["lost"] for r in (*held["alone_runs"], *held["with_hold_runs"]))
    out.append(Verdict("(d1) AIMLAPI batch jobs lost (all batches)", str(lost), "0", lost == 0))
    runs = upstreams["useapi"]["runs"]
    for run in runs:
        out.append(
            Verdict(
                f"(d2) useapi K={run['k']}: jobs/s measured ÷ ideal K÷G",
                f"{fmt(run['efficiency'])} ({fmt(run['rate_per_s'], 3)} / "
                f"{fmt(run['ideal_rate_per_s'], 3)} jobs/s)",
                NO_TARGET,
                None,
            )
        )
    if runs:
        ks = ", ".join(str(r["k"]) for r in runs)
        peak = max(r["max_concurrent"] for r in runs)
        busy = sum(r["rejected_busy"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        out.append(
            Verdict(
                f"(d2) useapi: most songs at once on one account (K = {ks})",
                str(peak),
                f"≤ {USEAPI_MAX_CONCURRENT}",
                peak <= USEAPI_MAX_CONCURRENT,
            )
        )
        out.append(Verdict("(d2) useapi: busy answers (rejected_busy)", str(busy), "0", busy == 0))
        out.append(Verdict("(d2) useapi: jobs lost", str(lost), "0", lost == 0))
    return out


def _pair(d: dict[str, Any], digits: int = 2) -> str:
    """ "p50 / p99" of a ``stats.describe`` result."""
    return f"{fmt(d['p50'], digits)} / {fmt(d['p99'], digits)}"


UPSTREAM_CPU_GROUPS = ("worker", "sync", "web", "scheduler", "sim", "postgres", "redis", "harness")


def section(results: Results) -> list[str]:
    held, useapi = results["upstreams"]["held_calls"], results["upstreams"]["useapi"]
    env = held["settings"]
    lines = [
        "### (d1) MiniMax calls held open beside other jobs",
        "",
        f"Web, worker, scheduler and the simulator as in (c), plus the sync worker "
        f"(`{results['commands'].get(SYNC_WORKER, 'chorus worker --sync')}`) with "
        f"`SYNC_CONCURRENCY={env['SYNC_CONCURRENCY']}`, and the simulator with "
        f"`SIM_THREADS={env['SIM_THREADS']}` (one thread per open MiniMax call). Catalog: model "
        f"`mm-hold` routed only to a MiniMax-protocol account (`max_in_flight: 200`, "
        f"`read_timeout: 600`), model `fast` routed only to an AIMLAPI-protocol account "
        f"(`max_in_flight: 100000`, `expected_seconds: {held['fast_latency_s']:g}`). "
        f"A batch of {held['batch']} `fast` jobs (`[sim:latency={held['fast_latency_s']:g}]`) "
        f"is submitted by the same {results['args']['clients']} client threads as in (c) and "
        "timed "
        "from its first submit to its last job's `finished_at`, after a warm-up batch of "
        "one-second jobs; "
        f"it runs {held['repeats']} times alone, then {held['hold']} `mm-hold` jobs "
        f"(`[sim:latency={held['hold_latency_s']:g}]`) are submitted, and once the simulator "
        f"shows all their calls open ({fmt(held['hold_open_after_s'], 1)} s after their "
        f"submit) it runs {held['repeats']} times again. The ratio is of the median completion "
        "times (the table shows the median batch of each side): one ~12-second batch on a "
        "shared 2-core machine can meet another process's burst of CPU. MiniMax calls open at "
        f"the simulator before the first batch beside them: {held['open_calls_before']}; "
        f"after the last: {held['open_calls_after']}; fewest seen between batches: "
        f"{held['open_calls_min']} (peak {held['minimax_max_concurrent']}).",
        "",
        "| | alone (median batch) | beside the held MiniMax calls (median batch) |",
        "|---|---:|---:|",
    ]
    runs = [held["alone"], held["with_hold"]]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("jobs accepted / SUCCEEDED", [f"{r['accepted']} / {r['succeeded']}" for r in runs])
    row("submit phase, s", [fmt(r["submit_seconds"]) for r in runs])
    row("POST latency p50 / p99, ms", [_pair(r["submit_latency_ms"], 1) for r in runs])
    row(
        "**completion (last finished_at − first submit), s**",
        [fmt(r["completion_s"]) for r in runs],
    )
    row("submit → RUNNING p50 / p99, s", [_pair(r["queued_s"]) for r in runs])
    row("RUNNING → finished p50 / p99, s", [_pair(r["running_s"]) for r in runs])
    row("jobs lost", [str(r["lost"]) for r in runs])
    row(
        "completion of every batch, in order, s",
        [
            ", ".join(fmt(r["completion_s"]) for r in held[side])
            for side in ("alone_runs", "with_hold_runs")
        ],
    )
    row(
        "CPU s: " + " / ".join(UPSTREAM_CPU_GROUPS) + " / other processes",
        [
            " / ".join(fmt(r["cpu_s"].get(k), 1) for k in (*UPSTREAM_CPU_GROUPS, "other"))
            + f" (machine {fmt(r['cpu_s'].get('machine_busy_pct'), 0)} % busy)"
            for r in runs
        ],
    )
    lines += [
        "",
        f"Ratio of the medians (beside ÷ alone): **{fmt(held['ratio'], 3)}** (target ≤ "
        f"{HELD_RATIO_MAX}). "
        f"Peak Postgres connections during (d1): {held['pg_connections']['bench_peak']} to this "
        f"database, {held['pg_connections']['server_peak']} on the server "
        f"(max_connections {held['pg_connections']['max_connections']}). The held jobs were "
        "not waited for (a job whose call is open is QUEUED with its submit under way); their "
        "states when the phase stopped: "
        + ", ".join(f"{k} {v}" for k, v in sorted(held["hold_statuses"].items()))
        + ". ERROR lines in the worker / sync worker logs: "
        f"{held['log_errors']['worker']['error_lines']} / "
        f"{held['log_errors']['sync']['error_lines']}.",
        "",
    ]
    for name, found in held["log_errors"].items():
        for message, count in found["exceptions"].items():
            lines.append(f"- (d1) {name} log: {count} × `{message}`")
    lines += [
        "",
        "### (d2) useapi throughput with K accounts",
        "",
        f"K useapi-protocol accounts on the simulator (`max_in_flight: 1` each, distinct "
        f"`upstream_account`), one model routed to all K in order; "
        f"{useapi['per_account']}·K jobs of G = {fmt(useapi['latency_s'], 0)} s "
        f"(`[sim:latency={useapi['latency_s']:g}]`, `expected_seconds: "
        f"{useapi['latency_s']:g}`) submitted at once. Throughput is jobs SUCCEEDED ÷ (last "
        "`finished_at` − first submit); the ideal is K ÷ G. The idle gap is, per account, the "
        "simulator's time between one song being ready and the next one's create: what Chorus "
        "adds to each song (detection, download, the final write, waking a waiting job, the "
        "next submit). Peak songs at once and busy answers are the simulator's own count "
        "(`max_concurrent`, `rejected_busy` of each account).",
        "",
        "| K | jobs (SUCCEEDED) | completion, s | ideal N·G÷K, s | jobs/s | ideal K÷G | "
        "**efficiency** | accounts used | most songs at once on one account | busy answers "
        "(429) | idle gap p50 / p99, s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in useapi["runs"]:
        lines.append(
            f"| {r['k']} | {r['jobs']} ({r['succeeded']}) | {fmt(r['completion_s'])} | "
            f"{fmt(r['ideal_s'], 0)} | {fmt(r['rate_per_s'], 3)} | "
            f"{fmt(r['ideal_rate_per_s'], 3)} | **{fmt(r['efficiency'])}** | "
            f"{r['accounts_used']} | {r['max_concurrent']} | {r['rejected_busy']} | "
            f"{_pair(r['slot_gap_s'])} |"
        )
    lines.append("")
    for name, found in useapi["log_errors"].items():
        for message, count in found["exceptions"].items():
            lines.append(f"- (d2) {name} log: {count} × `{message}`")
    lines.append("")
    return lines


def summary(results: Results) -> list[str]:
    lines = []
    held = results.get("upstreams", {}).get("held_calls")
    if held:
        lines.append("-" * 78)

        def times(runs: list[dict[str, Any]]) -> str:
            return ", ".join(f"{r['completion_s'] or 0:.2f}" for r in runs)

        lines.append(
            f"  (d1) batch of {held['batch']}: alone {times(held['alone_runs'])} s; beside "
            f"{held['hold']} held MiniMax calls {times(held['with_hold_runs'])} s (fewest open "
            f"during: {held['open_calls_min']}); medians' ratio {held['ratio'] or 0:.3f}"
        )
    for run in results.get("upstreams", {}).get("useapi", {}).get("runs", []):
        lines.append(
            f"  (d2) useapi K={run['k']}: {run['rate_per_s'] or 0:.3f}/s of ideal "
            f"{run['ideal_rate_per_s']:.3f}/s; idle slot gap p50 {run['slot_gap_s']['p50'] or 0:.2f} s"
        )
    return lines


def outside_cpu(results: Results) -> list[tuple[str, float, float]]:
    held = results.get("upstreams", {}).get("held_calls")
    if not held:
        return []
    seen = []
    for name, label in (("alone_runs", "alone"), ("with_hold_runs", "beside the held calls")):
        for i, run in enumerate(held[name], start=1):
            cpu = run["cpu_s"]
            seen.append(
                (f"(d1) AIMLAPI batch {label} #{i}", cpu["other"] + cpu["steal"], cpu["wall"])
            )
    return seen


PHASE = Phase(
    name="upstreams",
    heading="(d) upstreams: MiniMax held calls, useapi accounts",
    skip_help="skip phase (d) (MiniMax held calls, useapi)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    recorded=(
        "upstream_batch",
        "hold_jobs",
        "held_repeats",
        "useapi_accounts",
        "useapi_jobs_per_account",
    ),
    summary=summary,
    outside_cpu=outside_cpu,
)

"""Phase (c): N jobs in flight against the simulator, with adaptive and with fixed polling
(measured by ``bench/jobs.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.jobs import run_jobs_phase
from bench.phases.base import Context, Phase, Results
from bench.procs import free_port
from bench.report import Verdict, fmt_other
from bench.stats import fmt

# The targets.
MAKESPAN_RATIO_MAX = 1.25
LAG_FRACTION_MAX = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in flight (default 2000)")
    parser.add_argument(
        "--baseline-jobs",
        type=int,
        default=None,
        help="jobs for the fixed-poll run (default --jobs)",
    )
    parser.add_argument(
        "--large-jobs",
        type=int,
        default=0,
        help="(c) also run N jobs with adaptive and with fixed polling after the default-size "
        "runs, reported beside them, e.g. 10000 (default 0: off)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.baseline_jobs is None:
        args.baseline_jobs = args.jobs
    if args.large_jobs < 0:
        parser.error("--large-jobs must be 0 (off) or positive")
    if args.jobs < 1 or args.baseline_jobs < 1:
        parser.error("--jobs and --baseline-jobs must be positive")


def run(ctx: Context) -> Results:
    args = ctx.args
    out = {"jobs": _runs(ctx, args.jobs, args.baseline_jobs)}
    if args.jobs != args.baseline_jobs:
        ctx.notes.append(
            f"the fixed-poll baseline ran {args.baseline_jobs} jobs, the adaptive run {args.jobs}"
        )
    if args.large_jobs:
        out["jobs_large"] = _runs(ctx, args.large_jobs, args.large_jobs)
    return out


def _runs(ctx: Context, count: int, baseline: int) -> dict[str, Any]:
    """Phase (c) at one size: ``count`` jobs with adaptive polling, ``baseline`` with fixed."""
    out: dict[str, Any] = {}
    web_port = free_port()
    runs = (
        ("adaptive", count, {"POLL_STRATEGY": "adaptive"}),
        ("fixed", baseline, {"POLL_STRATEGY": "fixed", "POLL_FIXED_INTERVAL": "10"}),
    )
    for mode, n, extra in runs:
        print(f"(c) jobs: {n} jobs, {mode} polling", flush=True)
        out[mode] = run_jobs_phase(
            ctx.sup,
            ctx.stack,
            mode=mode,
            count=n,
            web_port=web_port,
            clients=ctx.args.connections,
            extra=extra,
            wait_timeout=ctx.args.wait_timeout,
        )
    return out


def verdicts(results: Results) -> list[Verdict]:
    out = _verdicts(results.get("jobs", {}), "(c)")
    large = results.get("jobs_large")
    if large:
        out += _verdicts(large, f"(c, {results['args']['large_jobs']:,} jobs)")
    return out


def _verdicts(jobs: dict[str, Any], tag: str) -> list[Verdict]:
    out: list[Verdict] = []
    adaptive, fixed = jobs.get("adaptive"), jobs.get("fixed")
    if adaptive:
        ratio = adaptive["makespan_ratio"]
        out.append(
            Verdict(
                f"{tag} makespan / ideal (adaptive)",
                fmt(ratio),
                f"≤ {MAKESPAN_RATIO_MAX}",
                ratio is not None and ratio <= MAKESPAN_RATIO_MAX,
            )
        )
    for run in (adaptive, fixed):
        if run:
            out.append(
                Verdict(f"{tag} jobs lost ({run['mode']})", str(run["lost"]), "0", run["lost"] == 0)
            )
            out.append(
                Verdict(
                    f"{tag} jobs duplicated ({run['mode']})",
                    str(run["duplicated"]),
                    "0",
                    run["duplicated"] == 0,
                )
            )
    if adaptive and fixed:
        a_calls, f_calls = adaptive["calls_per_job"]["mean"], fixed["calls_per_job"]["mean"]
        out.append(
            Verdict(
                f"{tag} upstream status calls per job, adaptive vs fixed 10 s (mean)",
                f"{fmt(a_calls)} vs {fmt(f_calls)}",
                "adaptive ≤ fixed",
                a_calls is not None and f_calls is not None and a_calls <= f_calls,
            )
        )
        for pct in ("p50", "p99"):
            a_lag, f_lag = adaptive["lag_s"][pct], fixed["lag_s"][pct]
            out.append(
                Verdict(
                    f"{tag} detection lag {pct}, adaptive vs fixed 10 s",
                    f"{fmt(a_lag)} s vs {fmt(f_lag)} s",
                    "adaptive ≤ ¼ × fixed",
                    a_lag is not None and f_lag is not None and a_lag <= LAG_FRACTION_MAX * f_lag,
                )
            )
    return out


def section(results: Results) -> list[str]:
    args = results["args"]
    lines = _section(results["jobs"], args["jobs"], args["baseline_jobs"], args["clients"])
    large = results.get("jobs_large")
    if large:
        n = args["large_jobs"]
        lines += [f"## (c) at {n:,} jobs", ""]
        lines += _section(large, n, n, args["clients"])
    return lines


def _section(jobs: dict[str, Any], count: int, baseline: int, clients: int) -> list[str]:
    lines = [
        f"{count:,} jobs with adaptive polling (Chorus's default), then "
        f"{baseline:,} with a fixed 10-second poll (`POLL_STRATEGY=fixed "
        "POLL_FIXED_INTERVAL=10`), each on a fresh simulator and an empty jobs table, submitted "
        f"through `POST /v1/music/generations` by {clients} keep-alive client threads, "
        "each job with a distinct prompt. Completion is read from the `jobs` table once a second. "
        "Detection lag is `jobs.finished_at` minus the simulator's `ready_at` for the job's "
        "generation (so it includes the audio download and the final write); calls per job are "
        "the simulator's `poll_count` per generation.",
        "",
        *_jobs_table(jobs),
        "",
        *_cost_table(jobs),
        "",
    ]
    for run in (jobs[m] for m in ("adaptive", "fixed") if m in jobs):
        for name, found in run["log_errors"].items():
            for message, times in found["exceptions"].items():
                lines.append(f"- {run['mode']} run, {name} log: {times} × `{message}`")
    lines.append("")
    return lines


CPU_GROUPS = (
    "worker",
    "web",
    "scheduler",
    "sim",
    "postgres",
    "redis",
    "harness",
    "interrupts",
    "steal",
    "other",
)


def _cost_table(jobs: dict[str, Any]) -> list[str]:
    """What one job's whole life (submit, polls, success, audio copy) cost, from the run's
    totals divided by its accepted jobs; runs recorded before the database counters have none."""
    runs = [jobs[m] for m in ("adaptive", "fixed") if m in jobs and "database" in jobs[m]]
    if not runs:
        return []
    lines = [
        "Cost per job: the run's totals over its accepted jobs. The CPU is everything the "
        "process group spent from the first submit to the last job's end, so it includes idle "
        "housekeeping; these jobs had no webhook.",
        "",
        "| per job | " + " | ".join(r["mode"] for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]

    def row(label: str, get: Any, digits: int = 1) -> None:
        cells = [fmt(get(r) / max(r["jobs_accepted"], 1), digits) for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row(
        "Postgres transactions",
        lambda r: r["database"]["xact_commit"] + r["database"]["xact_rollback"],
    )
    row(
        "Postgres rows written (inserted + updated + deleted)",
        lambda r: sum(r["database"][k] for k in ("tup_inserted", "tup_updated", "tup_deleted")),
    )
    row("Postgres rows fetched", lambda r: r["database"]["tup_fetched"])
    for group in ("postgres", "worker", "scheduler", "web", "redis"):
        row(f"{group} CPU, ms", lambda r, g=group: 1000 * r["cpu_s"].get(g, 0.0), 2)
    row("upstream status calls (simulator)", lambda r: r["calls_per_job"]["total"], 2)
    lines.append(
        "| upstream calls besides: submit, audio download | "
        + " | ".join("1 + 1" for _ in runs)
        + " |"
    )
    return lines


def _jobs_table(jobs: dict[str, Any]) -> list[str]:
    runs = [jobs[m] for m in ("adaptive", "fixed") if m in jobs]
    header = "| | " + " | ".join(
        "adaptive (Chorus default)" if r["mode"] == "adaptive" else "fixed 10 s (baseline)"
        for r in runs
    )
    lines = [header + " |", "|---|" + "---:|" * len(runs)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def cell(get: Any, digits: int = 2) -> list[str]:
        return [fmt(get(r), digits) for r in runs]

    row(
        "jobs submitted (accepted)",
        [f"{r['jobs_accepted']:,} of {r['jobs_requested']:,}" for r in runs],
    )
    row("submit phase, s", cell(lambda r: r["submit_seconds"]))
    row("submit rate, jobs/s", cell(lambda r: r["submit_rate_per_s"], 0))
    row(
        "POST latency p50 / p99 during submit, ms",
        [
            f"{fmt(r['submit_latency_ms']['p50'], 1)} / {fmt(r['submit_latency_ms']['p99'], 1)}"
            for r in runs
        ],
    )
    row("slowest upstream time, s", cell(lambda r: r["slowest_upstream_s"]))
    row("ideal (submit + slowest upstream), s", cell(lambda r: r["ideal_s"]))
    row("makespan (last finished − first submit), s", cell(lambda r: r["makespan_s"]))
    row("**makespan / ideal** (target ≤ 1.25)", cell(lambda r: r["makespan_ratio"], 3))
    row(
        "jobs lost (not SUCCEEDED)",
        [
            f"{r['lost']}"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in r['lost_by_status'].items())})"
                if r["lost_by_status"]
                else ""
            )
            for r in runs
        ],
    )
    row(
        "jobs duplicated (shared fingerprint / orphan generations / submit_attempts > 1)",
        [
            f"{r['duplicated']} ({r['dup_shared_fingerprint']} / {r['dup_orphan_generations']} / "
            f"{r['dup_submit_attempts_gt_1']})"
            for r in runs
        ],
    )
    row(
        "upstream status calls per job: mean / p50 / max (simulator)",
        [
            f"{fmt(r['calls_per_job']['mean'])} / {fmt(r['calls_per_job']['p50'], 0)} / {fmt(r['calls_per_job']['max'], 0)}"
            for r in runs
        ],
    )
    row(
        "status calls per job: mean / max (jobs.poll_count)",
        [
            f"{fmt(r['chorus_poll_count']['mean'])} / {fmt(r['chorus_poll_count']['max'], 0)}"
            for r in runs
        ],
    )
    row(
        "**detection lag p50 / p99 / max, s** (finished_at − ready_at)",
        [
            f"{fmt(r['lag_s']['p50'])} / {fmt(r['lag_s']['p99'])} / {fmt(r['lag_s']['max'])}"
            for r in runs
        ],
    )
    row(
        "poll lag p50 / p99, s (first poll seeing completed − ready_at)",
        [f"{fmt(r['poll_seen_lag_s']['p50'])} / {fmt(r['poll_seen_lag_s']['p99'])}" for r in runs],
    )
    row(
        "submit → upstream p50 / p99, s (job created → generation created)",
        [
            f"{fmt(r['submit_to_upstream_s']['p50'])} / {fmt(r['submit_to_upstream_s']['p99'])}"
            for r in runs
        ],
    )
    row(
        "**worker peak RSS, MB** (main + pool processes)",
        [
            f"{fmt(r['peak_rss_mb']['worker'], 0)} ({r['peak_rss_processes']['worker']} processes)"
            for r in runs
        ],
    )
    row(
        "web / scheduler / simulator peak RSS, MB",
        [
            f"{fmt(r['peak_rss_mb']['web'], 0)} / {fmt(r['peak_rss_mb']['scheduler'], 0)} / {fmt(r['peak_rss_mb']['sim'], 0)}"
            for r in runs
        ],
    )
    row(
        "CPU s from submit to done: worker / web / scheduler / sim / Postgres / Redis / harness / "
        "interrupts / steal / other processes",
        [
            " / ".join(
                fmt_other(r["cpu_s"].get(k), 0) if k == "other" else fmt(r["cpu_s"].get(k), 0)
                for k in CPU_GROUPS
            )
            + f" (machine {fmt(r['cpu_s'].get('machine_busy_pct'), 0)} % busy)"
            for r in runs
        ],
    )
    row(
        "peak Postgres connections: this database / whole server (max_connections)",
        [
            f"{r['pg_connections']['bench_peak']} / {r['pg_connections']['server_peak']} "
            f"({r['pg_connections']['max_connections']})"
            for r in runs
        ],
    )
    row(
        "ERROR lines in worker / web logs",
        [
            f"{r['log_errors']['worker']['error_lines']} / {r['log_errors']['web']['error_lines']}"
            for r in runs
        ],
    )
    row(
        "simulator requests by kind",
        [
            ", ".join(f"{k} {v:,}" for k, v in r["sim_counts"].get("by_kind", {}).items())
            for r in runs
        ],
    )
    row(
        "all jobs terminal before the hard timeout",
        [
            f"{'yes' if r['finished_before_timeout'] else 'NO'} (waited {fmt(r['waited_after_submit_s'], 0)} s of {fmt(r['hard_timeout_s'], 0)})"
            for r in runs
        ],
    )
    return lines


def summary(results: Results) -> list[str]:
    lines = []
    runs = [*results.get("jobs", {}).items(), *results.get("jobs_large", {}).items()]
    for mode, run in runs:
        lines.append("-" * 78)
        lines.append(
            f"  {mode}: {run['jobs_accepted']} jobs; submit {run['submit_seconds']:.1f} s; "
            f"makespan {run['makespan_s'] or 0:.1f} s vs ideal {run['ideal_s'] or 0:.1f} s; "
            f"lost {run['lost']} {run['lost_by_status'] or ''}; duplicated {run['duplicated']}"
        )
        calls, lag = run["calls_per_job"], run["lag_s"]
        lines.append(
            f"    calls/job mean {calls['mean'] or 0:.2f} max {calls['max'] or 0:.0f}; "
            f"lag p50 {lag['p50'] or 0:.2f} s p99 {lag['p99'] or 0:.2f} s max {lag['max'] or 0:.2f} s; "
            f"peak RSS worker {run['peak_rss_mb']['worker']:.0f} MB, web {run['peak_rss_mb']['web']:.0f} MB, "
            f"sim {run['peak_rss_mb']['sim']:.0f} MB"
        )
    return lines


def outside_cpu(results: Results) -> list[tuple[str, float, float]]:
    seen = []
    sizes = (("jobs", ""), ("jobs_large", f", {results['args'].get('large_jobs', 0):,} jobs"))
    for key, size in sizes:
        for mode, run in results.get(key, {}).items():
            cpu = run["cpu_s"]
            seen.append((f"jobs run ({mode}{size})", cpu["other"] + cpu["steal"], cpu["wall"]))
    return seen


PHASE = Phase(
    name="jobs",
    heading="(c) jobs in flight against the simulator",
    skip_help="skip phase (c)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    recorded=("jobs", "baseline_jobs", "large_jobs"),
    summary=summary,
    outside_cpu=outside_cpu,
)

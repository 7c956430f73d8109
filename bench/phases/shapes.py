"""Phase (h): the shapes users run, ``make run`` and the Procfile: idle log lines per minute and
webhook latency (measured by ``bench/shapes.py``)."""

from __future__ import annotations

import argparse

from bench.phases.base import Context, Phase, Results
from bench.report import Verdict
from bench.shapes import (
    IDLE_LINES_MAX,
    IDLE_SETTLE_S,
    IDLE_WINDOW_S,
    LATENCY_P99_MAX,
    MAX_SHAPE_JOBS,
    run_shapes_phase,
)
from bench.stats import fmt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape-jobs",
        type=int,
        default=200,
        help=f"(h) jobs per shape, each with a webhook (default 200, at most {MAX_SHAPE_JOBS})",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.shape_jobs <= MAX_SHAPE_JOBS:
        # A shape runs at its defaults: one key's rate limit (600 a minute) and the dev org's
        # credit bound what it accepts.
        parser.error(f"--shape-jobs must be between 1 and {MAX_SHAPE_JOBS}")


def run(ctx: Context) -> Results:
    args = ctx.args
    shapes = run_shapes_phase(
        ctx.logdir,
        redis_url=args.redis_url,
        count=args.shape_jobs,
        clients=args.connections,
        wait_timeout=args.wait_timeout,
    )
    return {"shapes": shapes}


def verdicts(results: Results) -> list[Verdict]:
    out: list[Verdict] = []
    for name, shape in results.get("shapes", {}).get("shapes", {}).items():
        per_minute = shape["idle"]["lines_per_minute"]
        out.append(
            Verdict(
                f"(h) {name}: log lines per minute, idle, every process (INFO)",
                fmt(per_minute, 1),
                f"≤ {IDLE_LINES_MAX}",
                per_minute <= IDLE_LINES_MAX,
            )
        )
        hooks = shape["webhooks"]
        p99 = hooks["latency_s"]["p99"]
        out.append(
            Verdict(
                f"(h) {name}: webhook latency after terminal p50 / p99",
                f"{fmt(hooks['latency_s']['p50'], 3)} s / {fmt(p99, 3)} s",
                f"p99 ≤ {fmt(LATENCY_P99_MAX, 0)} s",
                p99 is not None and p99 <= LATENCY_P99_MAX,
            )
        )
        out.append(
            Verdict(
                f"(h) {name}: webhooks lost ({hooks['accepted']} jobs)",
                str(hooks["lost"]),
                "0",
                hooks["lost"] == 0,
            )
        )
    return out


def section(results: Results) -> list[str]:
    shapes = results["shapes"]
    lines = [
        "Each shape started as its user starts it: `make run` is `chorus dev` with no "
        "`DATABASE_URL` and no `REDIS_URL` (the embedded PostgreSQL, the filesystem broker, "
        "every process but Flower); the Procfile is `honcho start release` on an empty "
        "database, then `honcho start` of every long-running line on the machine's Redis and "
        "a PostgreSQL of its own started with the `max_connections` that "
        "`chorus topology connections` gives for the defaults (the machine's keeps 100, "
        "shared with everything else). Default settings (`LOG_LEVEL=INFO`, the default catalog, the simulator's "
        "default latency) but `ALLOW_PRIVATE_URLS=true` for the local receiver. Once "
        f"`/healthz` answered and the scheduler led, and after {fmt(IDLE_SETTLE_S, 0)} s more, "
        f"every line the shape's processes printed over {fmt(IDLE_WINDOW_S, 0)} s with no "
        f"requests was counted. Then {shapes['jobs']} jobs (`music-2.6`), each with a "
        "`callback_url` on a receiver in the harness; latency is the arrival time minus the "
        "job's `finished_at` in that shape's database.",
        "",
        "| Shape | idle lines / min | target | idle CPU, % of a core | webhooks delivered "
        "(lost) | latency p50 / p99 / max, s | target p99 |",
        "|---|---:|---|---:|---|---|---|",
    ]
    for name, shape in shapes["shapes"].items():
        idle, hooks = shape["idle"], shape["webhooks"]
        lat = hooks["latency_s"]
        lines.append(
            f"| {name} | {fmt(idle['lines_per_minute'], 1)} | ≤ {IDLE_LINES_MAX} | "
            f"{fmt(idle['cpu_pct_of_one_core'], 1)} | {hooks['delivered']} of "
            f"{hooks['accepted']} ({hooks['lost']}) | {fmt(lat['p50'], 3)} / "
            f"{fmt(lat['p99'], 3)} / {fmt(lat['max'], 3)} | ≤ {fmt(LATENCY_P99_MAX, 0)} s |"
        )
    lines.append("")
    for name, shape in shapes["shapes"].items():
        idle = shape["idle"]
        counts = ", ".join(f"{p} {n}" for p, n in idle["by_process"].items()) or "none"
        lines += [f"Idle lines of {name} by process: {counts}.", ""]
        if idle["first_lines"]:
            lines += ["```", *idle["first_lines"][:10], "```", ""]
    return lines


def summary(results: Results) -> list[str]:
    lines = []
    for name, shape in results.get("shapes", {}).get("shapes", {}).items():
        lines.append("-" * 78)
        idle, hooks = shape["idle"], shape["webhooks"]
        lat = hooks["latency_s"]
        lines.append(
            f"  (h) {name}: idle {idle['lines_per_minute']:.1f} lines/min "
            f"{idle['by_process']}; webhooks {hooks['delivered']} of {hooks['accepted']} "
            f"delivered, p50 {lat['p50'] or 0:.3f} s p99 {lat['p99'] or 0:.3f} s"
        )
    return lines


PHASE = Phase(
    name="shapes",
    heading="(h) the shapes users run: `make run` and the Procfile",
    skip_help="skip phase (h) (`make run` and the Procfile: idle logs, webhook latency)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    recorded=("shape_jobs",),
    summary=summary,
)

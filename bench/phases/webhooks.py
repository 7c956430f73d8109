"""Phase (g): webhook deliveries, their latency and their throughput beside a slow receiver
(measured by ``bench/webhooks.py``)."""

from __future__ import annotations

import argparse

from bench.phases.base import Context, Phase, Results
from bench.procs import free_port
from bench.report import NO_TARGET, Verdict
from bench.stats import fmt
from bench.webhooks import SLOW_SECONDS, run_webhooks_phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-jobs",
        type=int,
        default=1000,
        help="(g) jobs per webhook run, one delivery each (default 1000)",
    )
    parser.add_argument(
        "--webhook-slow-share",
        type=float,
        default=0.05,
        help="(g) share of the second run's jobs sent to a receiver that takes 60 s (default 0.05)",
    )


def run(ctx: Context) -> Results:
    args = ctx.args
    hooks = run_webhooks_phase(
        ctx.sup,
        ctx.stack,
        web_port=free_port(),
        count=args.webhook_jobs,
        slow_share=args.webhook_slow_share,
        clients=args.connections,
        wait_timeout=args.wait_timeout,
    )
    return {"webhooks": hooks}


def verdicts(results: Results) -> list[Verdict]:
    hooks = results.get("webhooks")
    if not hooks:
        return []
    lat = hooks["latency_s"]
    return [
        Verdict(
            "(g) webhook latency after terminal p50 / p99",
            f"{fmt(lat['p50'], 3)} s / {fmt(lat['p99'], 3)} s",
            NO_TARGET,
            None,
        ),
        Verdict(
            "(g) deliveries/s beside a slow receiver",
            fmt(hooks["mixed"]["fast_per_s"], 1),
            NO_TARGET,
            None,
        ),
    ]


def section(results: Results) -> list[str]:
    hooks = results["webhooks"]
    lat = hooks["latency_s"]
    mixed = hooks["mixed"]
    return [
        f"{hooks['count']} jobs, each with a `callback_url` on a receiver in the harness "
        "(answers 200 at once). Latency: the receiver's arrival time minus the job's "
        "`finished_at` (the commit that also wrote the event row).",
        "",
        "| delivered | p50 | p99 | max |",
        "|---|---|---|---|",
        f"| {hooks['delivered']} of {hooks['jobs_succeeded']} | {fmt(lat['p50'], 3)} s | "
        f"{fmt(lat['p99'], 3)} s | {fmt(lat['max'], 3)} s |",
        "",
        f"With one slow receiver in the mix ({mixed['slow_jobs']} of {mixed['jobs']} jobs "
        f"to a receiver that takes {SLOW_SECONDS:g} s, cut off by the 10 s timeout): the "
        f"fast receiver got {mixed['fast_delivered']} deliveries at "
        f"{fmt(mixed['fast_per_s'], 1)} per second, against "
        f"{fmt(hooks['alone_per_s'], 1)} per second in the run without it (both rates are "
        "bounded by how fast the jobs themselves finish).",
        "",
    ]


def summary(results: Results) -> list[str]:
    hooks = results.get("webhooks")
    if not hooks:
        return []
    lat, mixed = hooks["latency_s"], hooks["mixed"]
    return [
        "-" * 78,
        f"  (g) webhooks: {hooks['delivered']} delivered; latency p50 {lat['p50'] or 0:.3f} s "
        f"p99 {lat['p99'] or 0:.3f} s; with a slow receiver {mixed['fast_per_s'] or 0:.1f}/s",
    ]


PHASE = Phase(
    name="webhooks",
    heading="(g) webhooks: delivery latency, and throughput beside a slow receiver",
    skip_help="skip phase (g) (webhook deliveries)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    summary=summary,
)

"""Phase (l): live event streams held by one web process (measured by ``bench/events.py``)."""

from __future__ import annotations

import argparse

from bench.events import run_events_phase
from bench.phases.base import Context, Phase, Results
from bench.report import Verdict
from bench.stats import fmt

# The bar: thousands of open streams leave the API answering at most of its pace,
# and an event reaches its streams within a second of its commit.
RATIO_MIN = 0.5
LAG_P99_MAX_MS = 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events-streams",
        type=int,
        nargs="+",
        default=[1000, 5000],
        metavar="N",
        help="(l) open event streams held by one web process, one run per N (default 1000 5000)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if any(n < 1 for n in args.events_streams):
        parser.error("--events-streams must be positive")


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(l) event streams: GET and POST {args.duration:g} s each, alone and beside "
        f"{', '.join(f'{n:,}' for n in args.events_streams)} open streams; delivery lag",
        flush=True,
    )
    return {
        "events": run_events_phase(
            ctx.sup,
            ctx.stack,
            streams=args.events_streams,
            seconds=args.duration,
            use_wrk=ctx.use_wrk,
            workdir=ctx.workdir,
        )
    }


def verdicts(results: Results) -> list[Verdict]:
    events = results.get("events")
    if not events:
        return []
    out = []
    for run_ in events["runs"]:
        n = run_["streams"]
        for kind in ("post", "get"):
            ratio = run_["ratio"][kind]
            out.append(
                Verdict(
                    f"(l) {kind.upper()} req/s beside {n:,} open streams, of its pace alone",
                    fmt(ratio),
                    f"≥ {RATIO_MIN:g}",
                    ratio is not None and ratio >= RATIO_MIN,
                )
            )
        p99 = run_["lag_ms"]["p99"]
        out.append(
            Verdict(
                f"(l) event delivery lag p99 to {n:,} streams",
                f"{fmt(p99, 0)} ms ({run_['lag_events']}/{run_['lag_expected']} timed)",
                f"< {LAG_P99_MAX_MS:g} ms, every event",
                p99 is not None
                and p99 < LAG_P99_MAX_MS
                and run_["lag_events"] == run_["lag_expected"],
            )
        )
    return out


def section(results: Results) -> list[str]:
    events = results["events"]
    alone = events["alone"]
    lines = [
        f"One web process ({events['env']['WEB_CONCURRENCY']} × Chorus's default threads), web "
        f"tier only. GET and POST were measured over {events['probe_connections']} keep-alive "
        f"connections for {fmt(events['seconds'], 0)} s each, alone, then while N org streams "
        "(`GET /v1/events`) of another org were held open on the process. Then that org's jobs "
        f"were cancelled one at a time ({events['lag_cancels']}); every stream gets each "
        "`cancelled` event, and a sample of the streams timed its arrival against the event's "
        "row timestamp (taken in the status change's transaction).",
        "",
        "| open streams | opened in s | POST req/s (ratio) | POST p99 ms | GET req/s (ratio) | "
        "GET p99 ms | lag p50 ms | lag p99 ms | lag max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| 0 | | {fmt(alone['post']['rps'], 0)} | {fmt(alone['post']['p99_ms'])} | "
        f"{fmt(alone['get']['rps'], 0)} | {fmt(alone['get']['p99_ms'])} | | | |",
    ]
    for r in events["runs"]:
        b, lag = r["beside"], r["lag_ms"]
        lines.append(
            f"| {r['streams']:,} | {fmt(r['opened_s'], 1)} | {fmt(b['post']['rps'], 0)} "
            f"({fmt(r['ratio']['post'])}) | {fmt(b['post']['p99_ms'])} | "
            f"{fmt(b['get']['rps'], 0)} ({fmt(r['ratio']['get'])}) | {fmt(b['get']['p99_ms'])} | "
            f"{fmt(lag['p50'], 0)} | {fmt(lag['p99'], 0)} | {fmt(lag['max'], 0)} |"
        )
    lines.append("")
    return lines


def summary(results: Results) -> list[str]:
    events = results.get("events")
    if not events:
        return []
    return ["-" * 78] + [
        f"  (l) {r['streams']:,} streams: POST ×{fmt(r['ratio']['post'])}, GET "
        f"×{fmt(r['ratio']['get'])}, lag p99 {fmt(r['lag_ms']['p99'], 0)} ms"
        for r in events["runs"]
    ]


PHASE = Phase(
    name="events",
    heading="(l) Live event streams: API throughput beside open streams, and delivery lag",
    skip_help="skip phase (l) (open event streams and their delivery lag)",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    recorded=("events_streams",),
    summary=summary,
)

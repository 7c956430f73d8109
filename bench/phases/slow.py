"""Phase (i): API latency beside slow clients (measured by ``bench/slow.py``)."""

from __future__ import annotations

from bench.phases.base import Context, Phase, Results
from bench.report import Verdict
from bench.slow import run_slow_phase
from bench.stats import fmt

# The target: the API keeps answering within a second beside the slow clients.
P99_MAX_MS = 1000.0


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(i) slow clients: GET and POST latency {args.duration:g} s each, alone and beside "
        "300 slow-loris connections and 100 slow reference fetches",
        flush=True,
    )
    return {
        "slow": run_slow_phase(
            ctx.sup, ctx.stack, seconds=args.duration, use_wrk=ctx.use_wrk, workdir=ctx.workdir
        )
    }


def verdicts(results: Results) -> list[Verdict]:
    slow = results.get("slow")
    if not slow:
        return []
    out = []
    for kind in ("post", "get"):
        p99 = slow["beside"][kind]["p99_ms"]
        out.append(
            Verdict(
                f"(i) {kind.upper()} p99 beside {slow['loris']} slow-loris connections and "
                f"{slow['references']} slow reference fetches",
                f"{fmt(p99)} ms (alone {fmt(slow['alone'][kind]['p99_ms'])} ms)",
                f"< {P99_MAX_MS:g} ms",
                p99 is not None and p99 < P99_MAX_MS,
            )
        )
    bad = sum(
        r["non_2xx"] + r["socket_errors"]
        for side in ("alone", "beside")
        for r in slow[side].values()
    )
    out.append(
        Verdict(
            "(i) non-2xx answers or socket errors of the measured requests", str(bad), "0", bad == 0
        )
    )
    return out


def section(results: Results) -> list[str]:
    slow = results["slow"]
    answers = ", ".join(
        f"{n} × {status}" for status, n in sorted(slow["reference_answers"].items())
    )
    lines = [
        f"The web process as the Procfile runs it ({slow['processes']} processes × "
        f"{slow['threads']} threads, Chorus's defaults), web tier only. GET and POST were "
        f"measured over {slow['probe_connections']} keep-alive connections for "
        f"{fmt(slow['seconds'], 0)} s each, alone, then beside {slow['loris']} slow-loris "
        "connections (headers sent a byte a second, never finished; each opened again as soon "
        f"as the server closed it at REQUEST_HEADER_TIMEOUT, {fmt(slow['header_timeout_s'], 0)} s) "
        f"and {slow['references']} clients each submitting a job whose reference track arrives "
        "a byte a second (cut at the fetch's 20 s deadline; a submit refused at once by the "
        f"fetch cap, {slow['fetch_cap']} per process, is sent again a second later).",
        "",
        "| | p50 ms alone | p99 ms alone | p50 ms beside | p99 ms beside | max ms beside | req/s alone | req/s beside |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("post", "get"):
        a, b = slow["alone"][kind], slow["beside"][kind]
        lines.append(
            f"| {kind.upper()} | {fmt(a['p50_ms'])} | {fmt(a['p99_ms'])} | {fmt(b['p50_ms'])} | "
            f"{fmt(b['p99_ms'])} | {fmt(b['max_ms'])} | {fmt(a['rps'], 0)} | {fmt(b['rps'], 0)} |"
        )
    lines += [
        "",
        f"Slow-loris connections open when the measurement began: {slow['loris_open_at_start']}; "
        f"closed by the server and opened again: {slow['loris_reopened']:,} (failed to open: "
        f"{slow['loris_errors']}). Connections the dripping reference server held at the end: "
        f"{slow['fetches_open_at_end']} (most at once: {slow['fetches_most']}, counting those "
        "Chorus had cut and the server had not yet noticed, a write or two later). Answers to the "
        f"reference submits: {answers or 'none'} (503: refused at once by the cap; 400: cut at "
        "the deadline).",
        "",
    ]
    return lines


def summary(results: Results) -> list[str]:
    slow = results.get("slow")
    if not slow:
        return []
    b = slow["beside"]
    return [
        "-" * 78,
        f"  (i) beside {slow['loris']} slow-loris + {slow['references']} slow references: "
        f"POST p99 {fmt(b['post']['p99_ms'])} ms, GET p99 {fmt(b['get']['p99_ms'])} ms",
    ]


PHASE = Phase(
    name="slow",
    heading="(i) Slow clients: API latency beside slow-loris connections and slow reference fetches",
    skip_help="skip phase (i) (slow-loris connections and slow reference fetches)",
    run=run,
    verdicts=verdicts,
    section=section,
    summary=summary,
)

"""Phase (f): ``Prefer: wait`` clients held by one web process (measured by ``bench/wait.py``)."""

from __future__ import annotations

from bench.phases.base import Context, Phase, Results
from bench.report import Verdict
from bench.stats import fmt
from bench.wait import run_wait_phase

# The target: POST/GET req/s beside the held waits ÷ without them.
WAIT_RATIO_MIN = 0.9


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(f) Prefer: wait: clients held by one web process, POST and GET "
        f"{args.duration:g} s each without and with them",
        flush=True,
    )
    return {"wait": run_wait_phase(ctx.sup, ctx.stack, **ctx.http_load())}


def verdicts(results: Results) -> list[Verdict]:
    wait = results.get("wait")
    if not wait:
        return []
    out = [
        Verdict(
            "(f) Prefer: wait requests one web process held throughout (fewest seen)",
            f"{wait['held_min']} (most {wait['held_max']}; {wait['clients']} clients)",
            f"= WAIT_MAX_WAITERS ({wait['cap']})",
            wait["held_min"] == wait["cap"] and wait["held_max"] <= wait["cap"],
        )
    ]
    for kind in ("post", "get"):
        ratio = wait["ratio"][kind]
        out.append(
            Verdict(
                f"(f) {kind.upper()} req/s beside the held waits ÷ without (one process)",
                f"{fmt(ratio, 3)} ({fmt(wait['with_waiters'][kind]['rps'], 0)} / "
                f"{fmt(wait['alone'][kind]['rps'], 0)} req/s)",
                f"≥ {WAIT_RATIO_MIN}",
                ratio is not None and ratio >= WAIT_RATIO_MIN,
            )
        )
    bad = sum(
        r["non_2xx"] + r["socket_errors"]
        for side in ("alone", "with_waiters")
        for r in wait[side].values()
    )
    out.append(Verdict("(f) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    return out


def section(results: Results) -> list[str]:
    wait = results["wait"]
    lines = [
        f"One gunicorn process (an event loop), {wait['threads']} threads (Chorus's default; "
        f"`WAIT_MAX_WAITERS` defaults to three quarters of them: {wait['cap']}); web tier only, "
        "so every job stays QUEUED and a granted wait holds its request the full "
        f"{wait['wait_s']} s. POST and GET were measured ({wait['connections']} connections, "
        f"{fmt(wait['seconds'], 0)} s each) with no waiters, then again while {wait['clients']} "
        f"clients ({wait['cap']} + {wait['clients'] - wait['cap']} over the cap) each kept a "
        f"`Prefer: wait={wait['wait_s']}` POST open, re-sending as soon as it was answered. "
        "A request is counted as held while it has been open for more than a second.",
        "",
        "| | no waiters, req/s | beside the waits, req/s | ratio | p99 ms, no waiters | "
        "p99 ms, beside |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("post", "get"):
        a, b = wait["alone"][kind], wait["with_waiters"][kind]
        lines.append(
            f"| {kind.upper()} | {fmt(a['rps'], 0)} | {fmt(b['rps'], 0)} | "
            f"{fmt(wait['ratio'][kind], 3)} | {fmt(a['p99_ms'])} | {fmt(b['p99_ms'])} |"
        )
    lines += [
        "",
        f"Waits held during the measurement: {wait['held_min']} to {wait['held_max']} "
        f"(sampled {wait['held_samples']} times). Requests over the cap answered at once "
        f"(no `Preference-Applied`): {wait['refused_at_once']}, the slowest in "
        f"{fmt(wait['refused_max_s'], 2)} s. Client errors: {wait['client_errors']}. "
        f"Peak RSS of the web process: {fmt(wait['peak_rss_mb'], 0)} MB.",
        "",
    ]
    return lines


def summary(results: Results) -> list[str]:
    wait = results.get("wait")
    if not wait:
        return []
    return [
        "-" * 78,
        f"  (f) {wait['held_min']}–{wait['held_max']} Prefer: wait requests held by one "
        f"process (cap {wait['cap']} of {wait['threads']} threads); POST × "
        f"{wait['ratio']['post'] or 0:.2f}, GET × {wait['ratio']['get'] or 0:.2f} beside them",
    ]


PHASE = Phase(
    name="wait",
    heading="(f) Prefer: wait: requests held open by one web process",
    skip_help="skip phase (f) (Prefer: wait clients held by one web process)",
    run=run,
    verdicts=verdicts,
    section=section,
    summary=summary,
)

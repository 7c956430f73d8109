"""Phase (k): POST and GET throughput with metrics and JSON logs on beside off (measured by
``bench/metrics.py``)."""

from __future__ import annotations

from bench.metrics import run_metrics_phase
from bench.phases.base import Context, Phase, Results
from bench.report import Verdict, faults, rounds_rows, rounds_text
from bench.stats import fmt

# The target: metrics and JSON logs on at most 5 % slower than off.
RATIO_MIN = 0.95
KINDS = {"post": "POST /v1/music/generations", "get": "GET /v1/music/generations/{id}"}


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(k) metrics and JSON logs: POST and GET, on vs off, {args.duration:g} s each, "
        f"{args.rounds} rounds",
        flush=True,
    )
    return {"metrics": run_metrics_phase(ctx.sup, ctx.stack, **ctx.http_load(), rounds=args.rounds)}


def verdicts(results: Results) -> list[Verdict]:
    measured = results.get("metrics")
    if not measured:
        return []
    out = []
    for kind, label in KINDS.items():
        ratio = measured[kind]["ratio"]
        on, off = measured[kind]["on"]["rps"], measured[kind]["off"]["rps"]
        out.append(
            Verdict(
                f"(k) {label} req/s, metrics and JSON logs on ÷ off",
                f"{fmt(ratio, 3)} ({fmt(on, 0)} / {fmt(off, 0)} req/s)",
                f"≥ {RATIO_MIN} (at most 5 % slower)",
                ratio is not None and ratio >= RATIO_MIN,
            )
        )
    bad = sum(faults(measured[k][s]) for k in KINDS for s in ("on", "off"))
    out.append(Verdict("(k) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    return out


def section(results: Results) -> list[str]:
    measured = results["metrics"]
    lines = [
        "Two web processes of (a)'s shape side by side, web tier only: one as the production "
        "shapes run it, metrics on (every request counted and timed by route, its samples "
        "written to files under a METRICS_DIR folder as `chorus web` does) and JSON log "
        "lines, one with `METRICS_ENABLED=false` and `LOG_FORMAT=plain`; "
        f"{measured['connections']} connections, {fmt(measured['seconds'], 0)} s per "
        f"measurement after a {fmt(measured['warmup_seconds'], 0)} s warm-up of each.",
        "",
        *rounds_text(
            measured.get("rounds", 1),
            measured["seconds"],
            "pair runs on and off back to back, each going first every other round",
        ),
        "| Request | metrics | req/s | p50 ms | p99 ms | non-2xx | server CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, label in KINDS.items():
        for side in ("on", "off"):
            m = measured[kind][side]
            lines.append(
                f"| {label} | {side} | {fmt(m['rps'], 0)} | {fmt(m['p50_ms'])} | "
                f"{fmt(m['p99_ms'])} | {m['non_2xx']} | "
                f"{fmt(m['cpu'].get('server_ms_per_request'))} |"
            )
    lines += ["", *rounds_rows({f"{k} {s}": measured[k][s] for k in KINDS for s in ("on", "off")})]
    return lines


def outside_cpu(results: Results) -> list[tuple[str, float, float]]:
    seen = []
    for kind in KINDS:
        for side in ("on", "off"):
            cpu = results.get("metrics", {}).get(kind, {}).get(side, {}).get("cpu")
            if cpu:
                seen.append((f"(k) {kind} {side}", cpu["other_s"] + cpu["steal_s"], cpu["wall_s"]))
    return seen


PHASE = Phase(
    name="metrics",
    heading="(k) metrics and JSON logs: POST and GET throughput, on beside off",
    skip_help="skip phase (k) (metrics and JSON logs on and off)",
    run=run,
    verdicts=verdicts,
    section=section,
    outside_cpu=outside_cpu,
)

"""Phases (a) and (b): the web tier against a bare Flask app (measured by ``bench/http_phase.py``)."""

from __future__ import annotations

from typing import Any

from bench.http_phase import SIDES, run_http_phase
from bench.phases.base import Context, Phase, Results
from bench.report import Verdict, faults, fmt_other, rounds_rows, rounds_text
from bench.stats import fmt

# The targets.
POST_RATIO_MIN = 0.5
GET_RATIO_MIN = 0.7


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(a)/(b) HTTP: Chorus vs bare, {args.duration:g} s each, {args.rounds} rounds",
        flush=True,
    )
    return {"http": run_http_phase(ctx.sup, ctx.stack, **ctx.http_load(), rounds=args.rounds)}


def verdicts(results: Results) -> list[Verdict]:
    out: list[Verdict] = []
    http = results.get("http")
    for kind, label, floor in (
        ("post", "(a) POST rps ratio Chorus/bare (bare: the same INSERT + commit)", POST_RATIO_MIN),
        ("get", "(b) GET rps ratio Chorus/bare (bare: the same primary-key read)", GET_RATIO_MIN),
    ):
        ratio = http[kind]["rps_ratio"] if http else None
        out.append(
            Verdict(label, fmt(ratio), f"≥ {floor}", None if ratio is None else ratio >= floor)
        )
    if http:
        bad = sum(
            faults(http[k][side]) for k in ("post", "get") for side in SIDES if side in http[k]
        )
        out.append(Verdict("(a)/(b) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    return out


def section(results: Results) -> list[str]:
    http = results["http"]
    lines = [
        f"Both apps under the same gunicorn command line (only the bind and the app differ); "
        f"worker and scheduler not running. {http['connections']} keep-alive connections, "
        f"{fmt(http['seconds'], 0)} s per measurement after a {fmt(http['warmup_seconds'], 0)} s "
        f"warm-up of each endpoint; every POST carries a distinct prompt; GETs cycle over "
        f"{http['get_job_ids']} existing (QUEUED) jobs. Generator: `{http['post']['chorus']['command']}`.",
        "",
        *rounds_text(
            http.get("rounds", 1),
            http["seconds"],
            "endpoint's three servers (Chorus, bare, bare with no I/O) are measured in turn",
        ),
        "The bare app is plain Flask with no extension and no ORM. The target's ratio is "
        "against its `/bare` routes, which do the durable work a job API cannot skip and "
        "nothing else: the POST INSERTs the request as a row and commits (through a psycopg2 "
        "pool), the GET reads that row by primary key. So the ratio prices Chorus's own "
        "logic (key check, validation, catalog, limits, money, the job object), not the "
        "database. Its `/bare/noio` routes touch no database at all; the ratio against them "
        "is shown too, and measures what durability costs on this machine as much as Chorus.",
        "",
    ]
    lines += [*_ratio_rows(http), "", *_http_table(http), ""]
    lines += rounds_rows(
        {
            f"{kind.upper()} {http[kind][side]['label']}": http[kind][side]
            for kind in ("post", "get")
            for side in SIDES
            if side in http[kind]
        }
    )
    lines += [
        f"Peak RSS during this phase: Chorus web {fmt(http['peak_rss_mb']['chorus_web'], 0)} MB, "
        f"bare {fmt(http['peak_rss_mb']['bare_web'], 0)} MB (gunicorn master + workers). "
        f"Jobs created and then deleted: {http['jobs_created']:,}.",
        "",
    ]
    return lines


def _ratio_rows(http: dict[str, Any]) -> list[str]:
    lines = [
        "| | req/s ratio (Chorus/bare) | p50 Chorus/bare | p99 Chorus/bare | target | result "
        "| req/s ratio (Chorus/bare, no I/O) |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for kind, floor in (("post", POST_RATIO_MIN), ("get", GET_RATIO_MIN)):
        c, b = http[kind]["chorus"], http[kind]["bare"]
        ratio = http[kind]["rps_ratio"]
        p50 = f"{fmt(c['p50_ms'])} / {fmt(b['p50_ms'])} ms"
        p99 = f"{fmt(c['p99_ms'])} / {fmt(b['p99_ms'])} ms"
        word = "PASS" if ratio is not None and ratio >= floor else "FAIL"
        lines.append(
            f"| {kind.upper()} | {fmt(ratio)} | {p50} | {p99} | ≥ {floor} | **{word}** "
            f"| {fmt(http[kind].get('rps_ratio_noio'))} |"
        )
    return lines


def _http_table(http: dict[str, Any]) -> list[str]:
    lines = [
        "| Endpoint | Server | Requests | req/s | p50 ms | p99 ms | max ms | non-2xx | socket errors "
        "| server CPU ms/req | Postgres CPU ms/req | Redis CPU ms/req | generator CPU ms/req "
        "| machine CPU busy | other processes, CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("post", "get"):
        for side in (side for side in SIDES if side in http[kind]):
            r = http[kind][side]
            cpu = r.get("cpu", {})
            lines.append(
                f"| {kind.upper()} | {r['label']} | {r['requests']:,} | {fmt(r['rps'], 0)} | "
                f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'], 1)} | "
                f"{r['non_2xx']} | {r['socket_errors']} | {fmt(cpu.get('server_ms_per_request'))} | "
                f"{fmt(cpu.get('postgres_ms_per_request'))} | "
                f"{fmt(cpu.get('redis_ms_per_request'))} | "
                f"{fmt(cpu.get('generator_ms_per_request'))} | "
                f"{fmt(cpu.get('machine_busy_pct'), 0)} % | {fmt_other(cpu.get('other_s'))} |"
            )
    return lines


def outside_cpu(results: Results) -> list[tuple[str, float, float]]:
    http = results.get("http")
    if not http:
        return []
    seen = []
    for kind in ("post", "get"):
        for side in ("chorus", "bare"):
            cpu = http[kind][side]["cpu"]
            seen.append((http[kind][side]["label"], cpu["other_s"] + cpu["steal_s"], cpu["wall_s"]))
    return seen


PHASE = Phase(
    name="http",
    heading="(a) and (b): web tier against a bare Flask app",
    skip_help="skip phases (a) and (b)",
    run=run,
    verdicts=verdicts,
    section=section,
    outside_cpu=outside_cpu,
)

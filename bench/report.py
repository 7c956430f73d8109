"""The machine, the verdicts, and the Markdown/JSON written into the repo."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import redis
import sqlalchemy as sa

from bench.procs import ROOT
from bench.stats import fmt

# The targets.
POST_RATIO_MIN = 0.5
GET_RATIO_MIN = 0.7
MAKESPAN_RATIO_MAX = 1.25
LAG_FRACTION_MAX = 0.25


@dataclass(frozen=True)
class Verdict:
    name: str
    value: str
    target: str
    ok: bool | None  # None: not measured in this run

    @property
    def word(self) -> str:
        return "—" if self.ok is None else ("PASS" if self.ok else "FAIL")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target, "result": self.word}


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def git_commit() -> str:
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return f"{commit} (with uncommitted changes)" if dirty else commit


def machine(database_url: str, redis_url: str) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            postgres = str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()
    client = redis.Redis.from_url(redis_url)
    try:
        info = cast(dict[str, Any], client.info("server"))  # sync client: a dict, not awaitable
        redis_version = str(info.get("redis_version"))
    finally:
        client.close()
    versions = {}
    for dist in ("gunicorn", "celery", "flask", "sqlalchemy", "psycopg2-binary", "requests"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "postgres": postgres,
        "redis": redis_version,
        "packages": versions,
        "loadavg_at_start": os.getloadavg(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


# ------------------------------------------------------------------ verdicts


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    http = results.get("http")
    for kind, label, floor in (
        ("post", "(a) POST rps ratio Chorus/bare", POST_RATIO_MIN),
        ("get", "(b) GET rps ratio Chorus/bare", GET_RATIO_MIN),
    ):
        ratio = http[kind]["rps_ratio"] if http else None
        out.append(
            Verdict(label, fmt(ratio), f"≥ {floor}", None if ratio is None else ratio >= floor)
        )
    if http:
        bad = sum(
            http[k][side]["non_2xx"] + http[k][side]["socket_errors"]
            for k in ("post", "get")
            for side in ("chorus", "bare")
        )
        out.append(Verdict("(a)/(b) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    jobs = results.get("jobs", {})
    adaptive, fixed = jobs.get("adaptive"), jobs.get("fixed")
    if adaptive:
        ratio = adaptive["makespan_ratio"]
        out.append(
            Verdict(
                "(c) makespan / ideal (adaptive)",
                fmt(ratio),
                f"≤ {MAKESPAN_RATIO_MAX}",
                ratio is not None and ratio <= MAKESPAN_RATIO_MAX,
            )
        )
    for run in (adaptive, fixed):
        if run:
            out.append(
                Verdict(f"(c) jobs lost ({run['mode']})", str(run["lost"]), "0", run["lost"] == 0)
            )
            out.append(
                Verdict(
                    f"(c) jobs duplicated ({run['mode']})",
                    str(run["duplicated"]),
                    "0",
                    run["duplicated"] == 0,
                )
            )
    if adaptive and fixed:
        a_calls, f_calls = adaptive["calls_per_job"]["mean"], fixed["calls_per_job"]["mean"]
        out.append(
            Verdict(
                "(c) upstream status calls per job, adaptive vs fixed 10 s (mean)",
                f"{fmt(a_calls)} vs {fmt(f_calls)}",
                "adaptive ≤ fixed",
                a_calls is not None and f_calls is not None and a_calls <= f_calls,
            )
        )
        for pct in ("p50", "p99"):
            a_lag, f_lag = adaptive["lag_s"][pct], fixed["lag_s"][pct]
            out.append(
                Verdict(
                    f"(c) detection lag {pct}, adaptive vs fixed 10 s",
                    f"{fmt(a_lag)} s vs {fmt(f_lag)} s",
                    "adaptive ≤ ¼ × fixed",
                    a_lag is not None and f_lag is not None and a_lag <= LAG_FRACTION_MAX * f_lag,
                )
            )
    return out


# ------------------------------------------------------------------ rendering


def _http_table(http: dict[str, Any]) -> list[str]:
    lines = [
        "| Endpoint | Server | Requests | req/s | p50 ms | p99 ms | max ms | non-2xx | socket errors "
        "| server CPU ms/req | Postgres CPU ms/req | Redis CPU ms/req | generator CPU ms/req "
        "| machine CPU busy | other processes, CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("post", "get"):
        for side in ("chorus", "bare"):
            r = http[kind][side]
            cpu = r.get("cpu", {})
            lines.append(
                f"| {kind.upper()} | {r['label']} | {r['requests']:,} | {fmt(r['rps'], 0)} | "
                f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'], 1)} | "
                f"{r['non_2xx']} | {r['socket_errors']} | {fmt(cpu.get('server_ms_per_request'))} | "
                f"{fmt(cpu.get('postgres_ms_per_request'))} | "
                f"{fmt(cpu.get('redis_ms_per_request'))} | "
                f"{fmt(cpu.get('generator_ms_per_request'))} | "
                f"{fmt(cpu.get('machine_busy_pct'), 0)} % | {fmt(cpu.get('other_s'), 1)} |"
            )
    return lines


def _ratio_rows(http: dict[str, Any]) -> list[str]:
    lines = [
        "| | req/s ratio (Chorus/bare) | p50 Chorus/bare | p99 Chorus/bare | target | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for kind, floor in (("post", POST_RATIO_MIN), ("get", GET_RATIO_MIN)):
        c, b = http[kind]["chorus"], http[kind]["bare"]
        ratio = http[kind]["rps_ratio"]
        p50 = f"{fmt(c['p50_ms'])} / {fmt(b['p50_ms'])} ms"
        p99 = f"{fmt(c['p99_ms'])} / {fmt(b['p99_ms'])} ms"
        word = "PASS" if ratio is not None and ratio >= floor else "FAIL"
        lines.append(f"| {kind.upper()} | {fmt(ratio)} | {p50} | {p99} | ≥ {floor} | **{word}** |")
    return lines


CPU_GROUPS = (
    "worker",
    "web",
    "beat",
    "sim",
    "postgres",
    "redis",
    "harness",
    "interrupts",
    "steal",
    "other",
)


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
        "web / beat / simulator peak RSS, MB",
        [
            f"{fmt(r['peak_rss_mb']['web'], 0)} / {fmt(r['peak_rss_mb']['beat'], 0)} / {fmt(r['peak_rss_mb']['sim'], 0)}"
            for r in runs
        ],
    )
    row(
        "CPU s from submit to done: worker / web / beat / sim / Postgres / Redis / harness / "
        "interrupts / steal / other processes",
        [
            " / ".join(fmt(r["cpu_s"].get(k), 0) for k in CPU_GROUPS)
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


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    args = results["args"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`) from one run against real Postgres, Redis, "
        "gunicorn and Celery on this machine. Do not edit by hand: run it again.",
        "",
        f"- Date: {results['date']}",
        f"- Commit: `{results['commit']}`",
        f"- Command: `{results['command']}`",
        f"- Total run time: {fmt(results['elapsed_s'], 0)} s",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} — {m['nproc']} cores (nproc)",
        f"- Memory: {m['memory_gib']} GiB",
        f"- OS / kernel: {m['os']} / {m['kernel']}",
        f"- Python {m['python']}, PostgreSQL {m['postgres']}, Redis {m['redis']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Load generator: {results['generator']}",
        f"- Load average (1/5/15 min) at start: {' / '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        "",
        "Everything (Postgres, Redis, the load generator, web, worker, beat and the simulator) "
        "shares the same cores, so the figures are a lower bound for a deployment that puts them "
        "on separate machines.",
        "",
    ]
    if results.get("notes"):
        lines += ["Notes on this run:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += ["## Targets", "", "| Measure | Value | Target | Result |", "|---|---|---|---|"]
    for v in results["verdicts"]:
        lines.append(f"| {v['name']} | {v['value']} | {v['target']} | **{v['result']}** |")
    lines += ["", "## Settings", ""]
    lines += ["Environment of every Chorus process:", "", "```"]
    lines += [f"{k}={v}" for k, v in results["env"].items()]
    lines += ["```", ""]
    lines += [
        "Command lines (`app.cli.web_argv`, `worker_argv`, `beat_argv`; `chorus sim`):",
        "",
        "```",
    ]
    lines += [f"{name}: {cmd}" for name, cmd in results["commands"].items()]
    lines += ["```", ""]
    lines += [
        "Process settings chosen for 2 cores: gunicorn gthread 2 processes × 8 threads "
        "(one process per core; threads cover the database round trips); Celery prefork 2 "
        "processes (one per core, which is all the GIL lets each use) with `IO_THREADS=16` each, "
        "enough threads to overlap the simulator's and Postgres's round trips. Not the default 32: "
        "every I/O thread holds a Postgres connection, and 2 × 32 worker threads plus 2 × 8 web "
        "threads come close to Postgres's `max_connections` (100, shared with everything on the "
        "machine); a run at 32 was refused connections (`too many clients`) and lost jobs. "
        "Beat ticks every 0.25 s and leases up to 500 due jobs per tick. `RATE_LIMIT` and "
        "`ORG_MAX_ACTIVE_JOBS` are raised out of the way (the checks still run on every POST) so "
        "that a 2,000-job burst measures throughput, not the limits; the bench model is free "
        "(price 0), though every submit still takes its org's balance-row lock. "
        "The bench catalog has one model, `music-2.6` (`expected_seconds: 60`, "
        "`expected_spread: 10`, `deadline_seconds: 600`), on one simulator account; the simulator "
        "answers each job in 60 ± 10 s (uniform) with a 2-second WAV.",
        "",
    ]
    http = results.get("http")
    lines += ["## (a) and (b): web tier against a bare Flask app", ""]
    if http:
        lines += [
            f"Both apps under the same gunicorn command line (only the bind and the app differ); "
            f"worker and beat not running. {http['connections']} keep-alive connections, "
            f"{fmt(http['seconds'], 0)} s per measurement after a {fmt(http['warmup_seconds'], 0)} s "
            f"warm-up of each endpoint; every POST carries a distinct prompt; GETs cycle over "
            f"{http['get_job_ids']} existing (QUEUED) jobs. Generator: `{http['post']['chorus']['command']}`.",
            "",
        ]
        lines += [*_ratio_rows(http), "", *_http_table(http), ""]
        lines += [
            f"Peak RSS during this phase: Chorus web {fmt(http['peak_rss_mb']['chorus_web'], 0)} MB, "
            f"bare {fmt(http['peak_rss_mb']['bare_web'], 0)} MB (gunicorn master + workers). "
            f"Jobs created and then deleted: {http['jobs_created']:,}.",
            "",
        ]
    else:
        lines += ["Not run (`--skip-http`).", ""]
    jobs = results.get("jobs")
    lines += ["## (c) jobs in flight against the simulator", ""]
    if jobs:
        lines += [
            f"{args['jobs']:,} jobs with adaptive polling (Chorus's default), then "
            f"{args['baseline_jobs']:,} with a fixed 10-second poll (`POLL_STRATEGY=fixed "
            "POLL_FIXED_INTERVAL=10`), each on a fresh simulator and an empty jobs table, submitted "
            f"through `POST /v1/music/generations` by {args['clients']} keep-alive client threads, "
            "each job with a distinct prompt. Completion is read from the `jobs` table once a second. "
            "Detection lag is `jobs.finished_at` minus the simulator's `ready_at` for the job's "
            "generation (so it includes the audio download and the final write); calls per job are "
            "the simulator's `poll_count` per generation.",
            "",
        ]
        lines += [*_jobs_table(jobs), ""]
        for run in (jobs[m] for m in ("adaptive", "fixed") if m in jobs):
            for name, found in run["log_errors"].items():
                for message, count in found["exceptions"].items():
                    lines.append(f"- {run['mode']} run, {name} log: {count} × `{message}`")
        lines.append("")
    else:
        lines += ["Not run (`--skip-jobs`).", ""]
    lines += [
        "## How to reproduce",
        "",
        "```sh",
        "make bench                              # defaults: 2,000 jobs, 15 s per HTTP measurement",
        'make bench BENCH_ARGS="--jobs 10000"    # the 10,000-job run',
        'make bench BENCH_ARGS="--help"          # every option',
        "```",
        "",
        "Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth; the run drops and "
        "recreates the `chorus_bench` database) and Redis on 127.0.0.1:6379 (db 14 is flushed). "
        "`make bench` installs `wrk` with apt when it is missing and it runs as root; without wrk "
        "the harness falls back to a Python load generator and says so. Raw figures: "
        "`docs/benchmarks.json`.",
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], output: Path) -> tuple[Path, Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results))
    raw = output.with_suffix(".json")
    raw.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return output, raw


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")

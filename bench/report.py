"""What every phase's part of the report shares: the machine, the verdicts, the noise notes,
the Markdown document's frame and the files written into the repo. Each phase's own verdicts and
section are in ``bench/phases/``."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import redis
import sqlalchemy as sa

from bench.procs import ROOT
from bench.stats import fmt

if TYPE_CHECKING:
    from bench.phases.base import Phase

NO_TARGET = "none (reported)"
# Share of the machine's CPU taken by processes outside the run (and the kernel) above which
# a phase's figures are flagged as noisy.
NOISE_SHARE = 0.10


@dataclass(frozen=True)
class Verdict:
    name: str
    value: str
    target: str
    ok: bool | None  # None: not measured in this run, or a figure with no target

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


def verdicts(results: dict[str, Any], phases: Sequence[Phase]) -> list[Verdict]:
    return [v for phase in phases for v in phase.verdicts(results)]


def noise_notes(results: dict[str, Any], phases: Sequence[Phase]) -> list[str]:
    """Say which measurements shared the machine with someone else, and how much."""
    cores = os.cpu_count() or 1
    seen = [
        (label, outside / (wall * cores))
        for phase in phases
        for label, outside, wall in phase.outside_cpu(results)
    ]
    noisy = [f"{label} {share:.0%}" for label, share in seen if share > NOISE_SHARE]
    if not noisy:
        return []
    return [
        "processes outside this run (and, in a VM, other guests: steal time) took a share of "
        "the machine's CPU while measuring — "
        + "; ".join(noisy)
        + ". The figures are noisier and lower "
        "than on an otherwise idle machine."
    ]


# ------------------------------------------------------------------ rendering helpers


def faults(measured: dict[str, Any]) -> int:
    """Non-2xx answers and socket errors over every round of a measurement."""
    return int(measured.get("faults_all_rounds", measured["non_2xx"] + measured["socket_errors"]))


def fmt_other(seconds: float | None, digits: int = 1) -> str:
    # What is left after subtracting every measured group; a small negative remainder is
    # sampling skew between /proc/stat and the per-process counters, not negative work.
    return fmt(None if seconds is None else max(0.0, seconds), digits)


def rounds_text(rounds: int, seconds: float, what: str) -> list[str]:
    if rounds < 2:
        return []
    return [
        f"Each {what}, {rounds} times over. Every figure below is that server's (or case's) "
        "median round by req/s, and each ratio is of the medians: on this shared machine a "
        f"single {fmt(seconds, 0)}-second measurement now and then lands in a slowdown of the "
        "host (its CPU ms per request rises and the machine shows idle CPU under full load).",
        "",
    ]


def rounds_rows(measured: dict[str, dict[str, Any]]) -> list[str]:
    """req/s of every round, in the order they ran."""
    if not any(len(m.get("rps_rounds", ())) > 1 for m in measured.values()):
        return []
    lines = ["| Measured | req/s of each round, in order |", "|---|---|"]
    for label, m in measured.items():
        rounds = " / ".join(fmt(rps, 0) for rps in m.get("rps_rounds", ()))
        lines.append(f"| {label} | {rounds} |")
    return [*lines, ""]


# ------------------------------------------------------------------ the document


def markdown(results: dict[str, Any], phases: Sequence[Phase]) -> str:
    m = results["machine"]
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
        "Everything (Postgres, Redis, the load generator, web, worker, scheduler and the simulator) "
        "shares the same cores, so the figures are a lower bound for a deployment that puts them "
        "on separate machines.",
        "",
    ]
    if results.get("notes"):
        lines += ["Notes on this run:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    lines += ["## Targets", "", "| Measure | Value | Target | Result |", "|---|---|---|---|"]
    for v in results["verdicts"]:
        lines.append(f"| {v['name']} | {v['value']} | {v['target']} | **{v['result']}** |")
    lines += ["", *comparison(results), "## Settings", ""]
    lines += ["Environment of every Chorus process:", "", "```"]
    lines += [f"{k}={v}" for k, v in results["env"].items()]
    lines += ["```", ""]
    lines += [
        "Command lines (`app.cli.processes.web_argv`, `worker_argv`, `scheduler_argv`; `chorus sim`):",
        "",
        "```",
    ]
    lines += [f"{name}: {cmd}" for name, cmd in results["commands"].items()]
    lines += [
        "```",
        "",
        "(Each run binds free ports of its own instead of the defaults shown.)",
        "",
    ]
    lines += [
        "Process settings chosen for 2 cores: gunicorn 2 processes (an event loop each) × 8 threads "
        "(one process per core; threads cover the database round trips); Celery prefork 2 "
        "processes (one per core, which is all the GIL lets each use) with `IO_THREADS=16` each, "
        "enough threads to overlap the simulator's and Postgres's round trips. Not the default 32: "
        "every I/O thread holds a Postgres connection, and 2 × 32 worker threads plus 2 × 8 web "
        "threads come close to Postgres's `max_connections` (100, shared with everything on the "
        "machine); a run at 32 was refused connections (`too many clients`) and lost jobs. "
        "The scheduler leases up to 500 due jobs per round, 0.5 s ahead. `RATE_LIMIT` and "
        "`ORG_MAX_ACTIVE_JOBS` are raised out of the way (the rate check still runs on every "
        "POST; so far below the cap, the cap is checked against the org's count of at most a "
        "second ago) so that a 2,000-job burst measures throughput, not the limits; the bench "
        "model is free (price 0): phase (e) measures money. "
        "The bench catalog has one model, `music-2.6` (`expected_seconds: 60`, "
        "`expected_spread: 10`, `deadline_seconds: 600`), on one simulator account; the simulator "
        "answers each job in 60 ± 10 s (uniform) with a 2-second WAV.",
        "",
    ]
    for phase in phases:
        lines += [f"## {phase.heading}", ""]
        if results.get(phase.name):
            lines += phase.section(results)
        else:
            lines += [f"Not run (`--skip-{phase.name}`).", ""]
    lines += [
        "## How to reproduce",
        "",
        "```sh",
        "make bench                              # defaults: 2,000 jobs, 15 s per HTTP measurement",
        'make bench BENCH_ARGS="--jobs 10000"    # the 10,000-job run',
        'make bench BENCH_ARGS="--large-jobs 10000"   # (c) at 2,000 and at 10,000 jobs',
        'make bench BENCH_ARGS="--skip-http --skip-jobs"   # only (d), (e) and (f)',
        'make bench BENCH_ARGS="--compare old.json"   # beside an earlier run\'s figures',
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


def earlier_run(path: Path) -> dict[str, Any]:
    """What the report quotes of an earlier run (its ``benchmarks.json``) beside this one."""
    earlier = json.loads(path.read_text())
    return {key: earlier[key] for key in ("date", "commit", "command", "verdicts")}


def comparison(results: dict[str, Any]) -> list[str]:
    """The measures both runs made, the earlier run's value beside this run's."""
    earlier = results.get("compare")
    if not earlier:
        return []
    before = {v["name"]: v["value"] for v in earlier["verdicts"] if v["value"] != "—"}
    rows = [v for v in results["verdicts"] if v["name"] in before and v["value"] != "—"]
    lines = [
        "## Before and after",
        "",
        f"Beside the run of commit `{earlier['commit']}` ({earlier['date']}, "
        f"`{earlier['command']}`): every measure both runs made.",
        "",
        f"| Measure | `{earlier['commit']}` | this run | Target |",
        "|---|---|---|---|",
    ]
    lines += [f"| {v['name']} | {before[v['name']]} | {v['value']} | {v['target']} |" for v in rows]
    return [*lines, ""]


def print_summary(results: dict[str, Any], phases: Sequence[Phase]) -> None:
    print("\n" + "=" * 78)
    print(f"Chorus bench — {results['date']} — commit {results['commit']}")
    m = results["machine"]
    print(
        f"{m['cpu']}, {m['nproc']} cores, {m['memory_gib']} GiB; generator: {results['generator']}"
    )
    print("-" * 78)
    width = max(len(v["name"]) for v in results["verdicts"]) if results["verdicts"] else 10
    for v in results["verdicts"]:
        print(f"  {v['name']:<{width}}  {v['value']:>22}  target {v['target']:<22} {v['result']}")
    for phase in phases:
        for line in phase.summary(results):
            print(line)
    for note in results.get("notes", []):
        print(f"  note: {note}")
    print("=" * 78)


def write(results: dict[str, Any], output: Path, phases: Sequence[Phase]) -> tuple[Path, Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results, phases))
    raw = output.with_suffix(".json")
    raw.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return output, raw


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")

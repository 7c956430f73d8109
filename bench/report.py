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

from bench.http_phase import SIDES
from bench.procs import ROOT
from bench.stats import fmt

# The targets.
POST_RATIO_MIN = 0.5
GET_RATIO_MIN = 0.7
MAKESPAN_RATIO_MAX = 1.25
LAG_FRACTION_MAX = 0.25
HELD_RATIO_MAX = 1.1  # (d1) AIMLAPI batch beside held MiniMax calls ÷ alone
USEAPI_MAX_CONCURRENT = 1  # (d2) songs at once on one useapi account
PRICED_RATIO_MIN = 0.85  # (e) priced ÷ free POST req/s: at most 15 % slower
WAIT_RATIO_MIN = 0.9  # (f) POST/GET req/s beside the held waits ÷ without them
NO_TARGET = "none (reported)"


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


# ------------------------------------------------------------------ verdicts


def verdicts(results: dict[str, Any]) -> list[Verdict]:
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
            _faults(http[k][side]) for k in ("post", "get") for side in SIDES if side in http[k]
        )
        out.append(Verdict("(a)/(b) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    out += _jobs_verdicts(results.get("jobs", {}), "(c)")
    large = results.get("jobs_large")
    if large:
        out += _jobs_verdicts(large, f"(c, {results['args']['large_jobs']:,} jobs)")
    out += _upstream_verdicts(results.get("upstreams"))
    out += _money_verdicts(results.get("money"))
    out += _wait_verdicts(results.get("wait"))
    hooks = results.get("webhooks")
    if hooks:
        lat = hooks["latency_s"]
        out.append(
            Verdict(
                "(g) webhook latency after terminal p50 / p99",
                f"{fmt(lat['p50'], 3)} s / {fmt(lat['p99'], 3)} s",
                NO_TARGET,
                None,
            )
        )
        out.append(
            Verdict(
                "(g) deliveries/s beside a slow receiver",
                fmt(hooks["mixed"]["fast_per_s"], 1),
                NO_TARGET,
                None,
            )
        )
    out += _shapes_verdicts(results.get("shapes"))
    return out


def _shapes_verdicts(shapes: dict[str, Any] | None) -> list[Verdict]:
    from bench.shapes import IDLE_LINES_MAX, LATENCY_P99_MAX

    out: list[Verdict] = []
    for name, shape in (shapes or {}).get("shapes", {}).items():
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


def _jobs_verdicts(jobs: dict[str, Any], tag: str) -> list[Verdict]:
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


def _wait_verdicts(wait: dict[str, Any] | None) -> list[Verdict]:
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


def _wait_section(wait: dict[str, Any]) -> list[str]:
    lines = [
        f"One gunicorn process, gthread, {wait['threads']} threads (Chorus's default; "
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


def _upstream_verdicts(upstreams: dict[str, Any] | None) -> list[Verdict]:
    if not upstreams:
        return []
    out: list[Verdict] = []
    held = upstreams["held_calls"]
    alone, beside = held["alone"], held["with_hold"]
    ratio = held["ratio"]
    # The figure means something only if every call was open from before the first batch
    # beside them to after the last.
    throughout = held["open_calls_min"] >= held["hold"]
    out.append(
        Verdict(
            f"(d1) AIMLAPI batch ({held['batch']} jobs) completion beside {held['hold']} held "
            f"MiniMax calls ÷ alone (medians of {held['repeats']})",
            f"{fmt(ratio, 3)} ({fmt(beside['completion_s'])} s / {fmt(alone['completion_s'])} s"
            + ("" if throughout else "; the calls were NOT all held open throughout")
            + ")",
            f"≤ {HELD_RATIO_MAX}",
            ratio is not None and ratio <= HELD_RATIO_MAX and throughout,
        )
    )
    lost = sum(r["lost"] for r in (*held["alone_runs"], *held["with_hold_runs"]))
    out.append(Verdict("(d1) AIMLAPI batch jobs lost (all batches)", str(lost), "0", lost == 0))
    runs = upstreams["useapi"]["runs"]
    for run in runs:
        out.append(
            Verdict(
                f"(d2) useapi K={run['k']}: jobs/s measured ÷ ideal K÷G",
                f"{fmt(run['efficiency'])} ({fmt(run['rate_per_s'], 3)} / "
                f"{fmt(run['ideal_rate_per_s'], 3)} jobs/s)",
                NO_TARGET,
                None,
            )
        )
    if runs:
        ks = ", ".join(str(r["k"]) for r in runs)
        peak = max(r["max_concurrent"] for r in runs)
        busy = sum(r["rejected_busy"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        out.append(
            Verdict(
                f"(d2) useapi: most songs at once on one account (K = {ks})",
                str(peak),
                f"≤ {USEAPI_MAX_CONCURRENT}",
                peak <= USEAPI_MAX_CONCURRENT,
            )
        )
        out.append(Verdict("(d2) useapi: busy answers (rejected_busy)", str(busy), "0", busy == 0))
        out.append(Verdict("(d2) useapi: jobs lost", str(lost), "0", lost == 0))
    return out


def _faults(measured: dict[str, Any]) -> int:
    """Non-2xx answers and socket errors over every round of a measurement."""
    return int(measured.get("faults_all_rounds", measured["non_2xx"] + measured["socket_errors"]))


def _money_verdicts(money: dict[str, Any] | None) -> list[Verdict]:
    if not money:
        return []
    cases, orgs = money["cases"], money["orgs"]
    out: list[Verdict] = []
    sizes = [(1, f"≥ {PRICED_RATIO_MIN} (at most 15 % slower)", True)]
    if orgs != 1:
        sizes.append((orgs, NO_TARGET, False))
    for n, target, judged in sizes:
        ratio = money[f"ratio_{n}"]
        free, priced = cases[f"free_{n}"], cases[f"priced_{n}"]
        where = "1 org, as in (a)" if n == 1 else f"{n} orgs round-robin"
        out.append(
            Verdict(
                f"(e) POST req/s, priced ÷ free model ({where})",
                f"{fmt(ratio, 3)} ({fmt(priced['rps'], 0)} / {fmt(free['rps'], 0)} req/s; "
                f"{fmt(100 * (1 - ratio) if ratio is not None else None, 1)} % slower)",
                target,
                (ratio is not None and ratio >= PRICED_RATIO_MIN) if judged else None,
            )
        )
    bad = sum(_faults(c) for c in cases.values())
    out.append(Verdict("(e) non-2xx answers or socket errors", str(bad), "0", bad == 0))
    consistent = all(
        c.get("consistent_all_rounds", c["tables"]["consistent"]) for c in cases.values()
    )
    out.append(
        Verdict(
            "(e) holds and balances match the jobs created",
            "yes" if consistent else "NO",
            "yes",
            consistent,
        )
    )
    return out


# ------------------------------------------------------------------ rendering


def _other(seconds: float | None, digits: int = 1) -> str:
    # What is left after subtracting every measured group; a small negative remainder is
    # sampling skew between /proc/stat and the per-process counters, not negative work.
    return fmt(None if seconds is None else max(0.0, seconds), digits)


def _rounds_text(rounds: int, seconds: float, what: str) -> list[str]:
    if rounds < 2:
        return []
    return [
        f"Each {what}, {rounds} times over. Every figure below is that server's (or case's) "
        "median round by req/s, and each ratio is of the medians: on this shared machine a "
        f"single {fmt(seconds, 0)}-second measurement now and then lands in a slowdown of the "
        "host (its CPU ms per request rises and the machine shows idle CPU under full load).",
        "",
    ]


def _rounds_rows(measured: dict[str, dict[str, Any]]) -> list[str]:
    """req/s of every round, in the order they ran."""
    if not any(len(m.get("rps_rounds", ())) > 1 for m in measured.values()):
        return []
    lines = ["| Measured | req/s of each round, in order |", "|---|---|"]
    for label, m in measured.items():
        rounds = " / ".join(fmt(rps, 0) for rps in m.get("rps_rounds", ()))
        lines.append(f"| {label} | {rounds} |")
    return [*lines, ""]


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
                f"{fmt(cpu.get('machine_busy_pct'), 0)} % | {_other(cpu.get('other_s'))} |"
            )
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
                _other(r["cpu_s"].get(k), 0) if k == "other" else fmt(r["cpu_s"].get(k), 0)
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


def _pair(d: dict[str, Any], digits: int = 2) -> str:
    """ "p50 / p99" of a ``stats.describe`` result."""
    return f"{fmt(d['p50'], digits)} / {fmt(d['p99'], digits)}"


UPSTREAM_CPU_GROUPS = ("worker", "sync", "web", "scheduler", "sim", "postgres", "redis", "harness")


def _upstreams_section(up: dict[str, Any], commands: dict[str, str]) -> list[str]:
    held, useapi = up["held_calls"], up["useapi"]
    env = held["settings"]
    lines = [
        "### (d1) MiniMax calls held open beside other jobs",
        "",
        f"Web, worker, scheduler and the simulator as in (c), plus the sync worker "
        f"(`{commands.get('sync worker ((d) only)', 'chorus worker --sync')}`) with "
        f"`SYNC_CONCURRENCY={env['SYNC_CONCURRENCY']}`, and the simulator with "
        f"`SIM_THREADS={env['SIM_THREADS']}` (one thread per open MiniMax call). Catalog: model "
        f"`mm-hold` routed only to a MiniMax-protocol account (`max_in_flight: 200`, "
        f"`read_timeout: 600`), model `fast` routed only to an AIMLAPI-protocol account "
        f"(`max_in_flight: 100000`, `expected_seconds: {held['fast_latency_s']:g}`). "
        f"A batch of {held['batch']} `fast` jobs (`[sim:latency={held['fast_latency_s']:g}]`) "
        f"is submitted by the same {up.get('clients', 32)} client threads as in (c) and timed "
        "from its first submit to its last job's `finished_at`, after a warm-up batch of "
        "one-second jobs; "
        f"it runs {held['repeats']} times alone, then {held['hold']} `mm-hold` jobs "
        f"(`[sim:latency={held['hold_latency_s']:g}]`) are submitted, and once the simulator "
        f"shows all their calls open ({fmt(held['hold_open_after_s'], 1)} s after their "
        f"submit) it runs {held['repeats']} times again. The ratio is of the median completion "
        "times (the table shows the median batch of each side): one ~12-second batch on a "
        "shared 2-core machine can meet another process's burst of CPU. MiniMax calls open at "
        f"the simulator before the first batch beside them: {held['open_calls_before']}; "
        f"after the last: {held['open_calls_after']}; fewest seen between batches: "
        f"{held['open_calls_min']} (peak {held['minimax_max_concurrent']}).",
        "",
        "| | alone (median batch) | beside the held MiniMax calls (median batch) |",
        "|---|---:|---:|",
    ]
    runs = [held["alone"], held["with_hold"]]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("jobs accepted / SUCCEEDED", [f"{r['accepted']} / {r['succeeded']}" for r in runs])
    row("submit phase, s", [fmt(r["submit_seconds"]) for r in runs])
    row("POST latency p50 / p99, ms", [_pair(r["submit_latency_ms"], 1) for r in runs])
    row(
        "**completion (last finished_at − first submit), s**",
        [fmt(r["completion_s"]) for r in runs],
    )
    row("submit → RUNNING p50 / p99, s", [_pair(r["queued_s"]) for r in runs])
    row("RUNNING → finished p50 / p99, s", [_pair(r["running_s"]) for r in runs])
    row("jobs lost", [str(r["lost"]) for r in runs])
    row(
        "completion of every batch, in order, s",
        [
            ", ".join(fmt(r["completion_s"]) for r in held[side])
            for side in ("alone_runs", "with_hold_runs")
        ],
    )
    row(
        "CPU s: " + " / ".join(UPSTREAM_CPU_GROUPS) + " / other processes",
        [
            " / ".join(fmt(r["cpu_s"].get(k), 1) for k in (*UPSTREAM_CPU_GROUPS, "other"))
            + f" (machine {fmt(r['cpu_s'].get('machine_busy_pct'), 0)} % busy)"
            for r in runs
        ],
    )
    lines += [
        "",
        f"Ratio of the medians (beside ÷ alone): **{fmt(held['ratio'], 3)}** (target ≤ "
        f"{HELD_RATIO_MAX}). "
        f"Peak Postgres connections during (d1): {held['pg_connections']['bench_peak']} to this "
        f"database, {held['pg_connections']['server_peak']} on the server "
        f"(max_connections {held['pg_connections']['max_connections']}). The held jobs were "
        "not waited for (a job whose call is open is QUEUED with its submit under way); their "
        "states when the phase stopped: "
        + ", ".join(f"{k} {v}" for k, v in sorted(held["hold_statuses"].items()))
        + ". ERROR lines in the worker / sync worker logs: "
        f"{held['log_errors']['worker']['error_lines']} / "
        f"{held['log_errors']['sync']['error_lines']}.",
        "",
    ]
    for name, found in held["log_errors"].items():
        for message, count in found["exceptions"].items():
            lines.append(f"- (d1) {name} log: {count} × `{message}`")
    lines += [
        "",
        "### (d2) useapi throughput with K accounts",
        "",
        f"K useapi-protocol accounts on the simulator (`max_in_flight: 1` each, distinct "
        f"`upstream_account`), one model routed to all K in order; "
        f"{useapi['per_account']}·K jobs of G = {fmt(useapi['latency_s'], 0)} s "
        f"(`[sim:latency={useapi['latency_s']:g}]`, `expected_seconds: "
        f"{useapi['latency_s']:g}`) submitted at once. Throughput is jobs SUCCEEDED ÷ (last "
        "`finished_at` − first submit); the ideal is K ÷ G. The idle gap is, per account, the "
        "simulator's time between one song being ready and the next one's create: what Chorus "
        "adds to each song (detection, download, the final write, waking a waiting job, the "
        "next submit). Peak songs at once and busy answers are the simulator's own count "
        "(`max_concurrent`, `rejected_busy` of each account).",
        "",
        "| K | jobs (SUCCEEDED) | completion, s | ideal N·G÷K, s | jobs/s | ideal K÷G | "
        "**efficiency** | accounts used | most songs at once on one account | busy answers "
        "(429) | idle gap p50 / p99, s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in useapi["runs"]:
        lines.append(
            f"| {r['k']} | {r['jobs']} ({r['succeeded']}) | {fmt(r['completion_s'])} | "
            f"{fmt(r['ideal_s'], 0)} | {fmt(r['rate_per_s'], 3)} | "
            f"{fmt(r['ideal_rate_per_s'], 3)} | **{fmt(r['efficiency'])}** | "
            f"{r['accounts_used']} | {r['max_concurrent']} | {r['rejected_busy']} | "
            f"{_pair(r['slot_gap_s'])} |"
        )
    lines.append("")
    for name, found in useapi["log_errors"].items():
        for message, count in found["exceptions"].items():
            lines.append(f"- (d2) {name} log: {count} × `{message}`")
    lines.append("")
    return lines


def _money_section(money: dict[str, Any], http: dict[str, Any] | None) -> list[str]:
    cases = money["cases"]
    lines = [
        f"Phase (a)'s gunicorn command line and load generator, web tier only, "
        f"{money['connections']} connections, {fmt(money['seconds'], 0)} s per case after a "
        f"{fmt(money['warmup_seconds'], 0)} s warm-up of each model (on orgs of its own), cases "
        "back to back in the order below. Free: `"
        f"{money['free_model']}` (price 0). Priced: `{money['paid_model']}` "
        f"({money['price']} minor units of {money['currency']} a song; every org, free ones too, "
        f"funded with {money['fund_per_org']:,} so no request is refused). Every case uses fresh "
        "orgs with no jobs. Every priced POST of one org takes that org's balance-row lock until "
        "its commit (the hold), so one org's priced submits are serialised; each model is "
        f"therefore measured on one org's key, as in (a), and spread round-robin over {money['orgs']} orgs (one key each). "
        "**The target is judged on the 1-org pair**: the issue asks for submit throughput with "
        "money on beside core's figure, which is (a)'s one-key load.",
        "",
        *_rounds_text(
            money.get("rounds", 1),
            money["seconds"],
            "round runs the four cases in turn, on fresh orgs",
        ),
        "| Case | orgs | requests | req/s | p50 ms | p99 ms | max ms | non-2xx | socket errors "
        "| jobs created (per org) | holds | server CPU ms/req | Postgres CPU ms/req "
        "| machine CPU busy | other processes, CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cases.values():
        cpu, t = c["cpu"], c["tables"]
        per_org = t["jobs_per_org"]
        spread = f" ({min(per_org):,}–{max(per_org):,})" if len(per_org) > 1 else ""
        lines.append(
            f"| {c['label']} | {c['orgs']} | {c['requests']:,} | {fmt(c['rps'], 0)} | "
            f"{fmt(c['p50_ms'])} | {fmt(c['p99_ms'])} | {fmt(c['max_ms'], 1)} | {c['non_2xx']} | "
            f"{c['socket_errors']} | {t['jobs_created']:,}{spread} | {t['holds']:,} | "
            f"{fmt(cpu.get('server_ms_per_request'))} | "
            f"{fmt(cpu.get('postgres_ms_per_request'))} | "
            f"{fmt(cpu.get('machine_busy_pct'), 0)} % | {fmt(cpu.get('other_s'), 1)} |"
        )
    lines += ["", *_rounds_rows({c["label"]: c for c in cases.values()})]
    lines += [
        "| | priced ÷ free req/s | slower by | target | result |",
        "|---|---:|---:|---|---|",
    ]
    sizes = [1] if money["orgs"] == 1 else [1, money["orgs"]]
    for n in sizes:
        ratio = money[f"ratio_{n}"]
        slower = fmt(100 * (1 - ratio), 1) + " %" if ratio is not None else "—"
        if n == 1:
            word = "PASS" if ratio is not None and ratio >= PRICED_RATIO_MIN else "FAIL"
            lines.append(
                f"| 1 org (judged) | {fmt(ratio, 3)} | {slower} | ≥ {PRICED_RATIO_MIN} | **{word}** |"
            )
        else:
            lines.append(f"| {n} orgs round-robin | {fmt(ratio, 3)} | {slower} | {NO_TARGET} | — |")
    lines.append("")
    if http:
        lines += [
            f"For comparison, (a)'s Chorus POST in this run (free model, the bench org's key): "
            f"{fmt(http['post']['chorus']['rps'], 0)} req/s, p50 "
            f"{fmt(http['post']['chorus']['p50_ms'])} ms, p99 "
            f"{fmt(http['post']['chorus']['p99_ms'])} ms.",
            "",
        ]
    bad = [
        c for c in cases.values() if not c.get("consistent_all_rounds", c["tables"]["consistent"])
    ]
    if not bad:
        lines += [
            "The tables were checked after each case (one snapshot): every priced job has "
            "exactly one hold of its price, no free job has any, and each case's orgs' available "
            "and held amounts add up to their funding.",
            "",
        ]
    for c in bad:
        t = c["tables"]
        lines.append(
            f"- **{c['label']}: the tables do not add up**: {t['jobs_created']:,} jobs, "
            f"{t['holds']:,} holds, available {t['available']:,} (expected "
            f"{t['expected_available']:,}), held {t['held']:,} (expected {t['expected_held']:,})."
        )
    if bad:
        lines.append("")
    return lines


def _jobs_section(jobs: dict[str, Any], count: int, baseline: int, clients: int) -> list[str]:
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
    ]
    for run in (jobs[m] for m in ("adaptive", "fixed") if m in jobs):
        for name, found in run["log_errors"].items():
            for message, times in found["exceptions"].items():
                lines.append(f"- {run['mode']} run, {name} log: {times} × `{message}`")
    lines.append("")
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
    lines += ["", "## Settings", ""]
    lines += ["Environment of every Chorus process:", "", "```"]
    lines += [f"{k}={v}" for k, v in results["env"].items()]
    lines += ["```", ""]
    lines += [
        "Command lines (`app.cli.web_argv`, `worker_argv`, `scheduler_argv`; `chorus sim`):",
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
        "Process settings chosen for 2 cores: gunicorn gthread 2 processes × 8 threads "
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
    http = results.get("http")
    lines += ["## (a) and (b): web tier against a bare Flask app", ""]
    if http:
        lines += [
            f"Both apps under the same gunicorn command line (only the bind and the app differ); "
            f"worker and scheduler not running. {http['connections']} keep-alive connections, "
            f"{fmt(http['seconds'], 0)} s per measurement after a {fmt(http['warmup_seconds'], 0)} s "
            f"warm-up of each endpoint; every POST carries a distinct prompt; GETs cycle over "
            f"{http['get_job_ids']} existing (QUEUED) jobs. Generator: `{http['post']['chorus']['command']}`.",
            "",
            *_rounds_text(
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
        lines += _rounds_rows(
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
    else:
        lines += ["Not run (`--skip-http`).", ""]
    jobs = results.get("jobs")
    lines += ["## (c) jobs in flight against the simulator", ""]
    if jobs:
        lines += _jobs_section(jobs, args["jobs"], args["baseline_jobs"], args["clients"])
    else:
        lines += ["Not run (`--skip-jobs`).", ""]
    large = results.get("jobs_large")
    if large:
        n = args["large_jobs"]
        lines += [f"## (c) at {n:,} jobs", ""]
        lines += _jobs_section(large, n, n, args["clients"])
    upstreams = results.get("upstreams")
    lines += ["## (d) upstreams: MiniMax held calls, useapi accounts", ""]
    if upstreams:
        lines += _upstreams_section({**upstreams, "clients": args["clients"]}, results["commands"])
    else:
        lines += ["Not run (`--skip-upstreams`).", ""]
    money = results.get("money")
    lines += ["## (e) money: submit throughput, priced model beside free", ""]
    if money:
        lines += _money_section(money, http)
    else:
        lines += ["Not run (`--skip-money`).", ""]
    wait = results.get("wait")
    lines += ["## (f) Prefer: wait: requests held open by one web process", ""]
    if wait:
        lines += _wait_section(wait)
    else:
        lines += ["Not run (`--skip-wait`).", ""]
    hooks = results.get("webhooks")
    lines += ["## (g) webhooks: delivery latency, and throughput beside a slow receiver", ""]
    if hooks:
        from bench.webhooks import section

        lines += section(hooks)
    else:
        lines += ["Not run (`--skip-webhooks`).", ""]
    shapes = results.get("shapes")
    lines += ["## (h) the shapes users run: `make run` and the Procfile", ""]
    if shapes:
        from bench.shapes import section as shapes_section

        lines += shapes_section(shapes)
    else:
        lines += ["Not run (`--skip-shapes`).", ""]
    lines += [
        "## How to reproduce",
        "",
        "```sh",
        "make bench                              # defaults: 2,000 jobs, 15 s per HTTP measurement",
        'make bench BENCH_ARGS="--jobs 10000"    # the 10,000-job run',
        'make bench BENCH_ARGS="--large-jobs 10000"   # (c) at 2,000 and at 10,000 jobs',
        'make bench BENCH_ARGS="--skip-http --skip-jobs"   # only (d), (e) and (f)',
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

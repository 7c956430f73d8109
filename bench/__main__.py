"""``python -m bench``: one benchmark run, end to end. See ``bench/__init__.py``."""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bench import load, report
from bench.procs import ROOT, PhaseError, Supervisor, free_port
from bench.shapes import MAX_SHAPE_JOBS
from bench.stack import Stack, prepare, sim_command, web_command
from config import load_settings

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/chorus_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Chorus: web tier vs a bare Flask app, then N jobs end to end "
        "against the simulator with adaptive and with fixed 10-second polling, then the "
        "upstream protocols (MiniMax held calls, useapi accounts), then submit throughput with "
        "money on and off, then `Prefer: wait` clients held by one web process, then webhook "
        "deliveries, then the shapes users run (`make run` and the Procfile).",
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in flight (default 2000)")
    parser.add_argument(
        "--baseline-jobs",
        type=int,
        default=None,
        help="jobs for the fixed-poll run (default --jobs)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=15.0,
        help="seconds per HTTP load measurement (default 15)",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="HTTP connections / client threads (default 32)"
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=370.0,
        help="seconds after the last submit before unfinished jobs count as lost (default 370)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="(a), (b) and (e): times each HTTP measurement is made, in turn with the others; "
        "figures are the median rounds (default 3)",
    )
    parser.add_argument("--skip-http", action="store_true", help="skip phases (a) and (b)")
    parser.add_argument("--skip-jobs", action="store_true", help="skip phase (c)")
    parser.add_argument(
        "--skip-upstreams", action="store_true", help="skip phase (d) (MiniMax held calls, useapi)"
    )
    parser.add_argument(
        "--skip-money", action="store_true", help="skip phase (e) (submit with money on and off)"
    )
    parser.add_argument(
        "--skip-wait",
        action="store_true",
        help="skip phase (f) (Prefer: wait clients held by one web process)",
    )
    parser.add_argument(
        "--upstream-batch",
        type=int,
        default=200,
        help="(d1) AIMLAPI jobs per batch, alone and beside the held calls (default 200)",
    )
    parser.add_argument(
        "--hold-jobs",
        type=int,
        default=100,
        help="(d1) MiniMax calls held open during the second batch (default 100)",
    )
    parser.add_argument(
        "--held-repeats",
        type=int,
        default=3,
        help="(d1) batches on each side; the ratio is of the medians (default 3)",
    )
    parser.add_argument(
        "--useapi-accounts",
        default="1,2,4,8",
        help="(d2) comma-separated numbers K of useapi accounts, one run each (default 1,2,4,8)",
    )
    parser.add_argument(
        "--useapi-jobs-per-account",
        type=int,
        default=6,
        help="(d2) jobs per account in each run: N = this x K (default 6)",
    )
    parser.add_argument(
        "--money-orgs",
        type=int,
        default=8,
        help="(e) orgs the spread-out cases send their requests over, round-robin (default 8)",
    )
    parser.add_argument(
        "--skip-webhooks", action="store_true", help="skip phase (g) (webhook deliveries)"
    )
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
    parser.add_argument(
        "--large-jobs",
        type=int,
        default=0,
        help="(c) also run N jobs with adaptive and with fixed polling after the default-size "
        "runs, reported beside them, e.g. 10000 (default 0: off)",
    )
    parser.add_argument(
        "--skip-shapes",
        action="store_true",
        help="skip phase (h) (`make run` and the Procfile: idle logs, webhook latency)",
    )
    parser.add_argument(
        "--shape-jobs",
        type=int,
        default=200,
        help=f"(h) jobs per shape, each with a webhook (default 200, at most {MAX_SHAPE_JOBS})",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--output", type=Path, default=Path("docs/benchmarks.md"), help="Markdown report path"
    )
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="use the Python load generator even if wrk is installed",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temp dir (logs, audio) after success"
    )
    args = parser.parse_args(argv)
    if args.baseline_jobs is None:
        args.baseline_jobs = args.jobs
    if args.large_jobs < 0:
        parser.error("--large-jobs must be 0 (off) or positive")
    if not 1 <= args.shape_jobs <= MAX_SHAPE_JOBS:
        # A shape runs at its defaults: one key's rate limit (600 a minute) and the dev org's
        # credit bound what it accepts.
        parser.error(f"--shape-jobs must be between 1 and {MAX_SHAPE_JOBS}")
    if args.jobs < 1 or args.baseline_jobs < 1 or args.connections < 1 or args.duration <= 0:
        parser.error("--jobs, --baseline-jobs, --connections and --duration must be positive")
    try:
        args.useapi_accounts = sorted({int(k) for k in args.useapi_accounts.split(",") if k})
    except ValueError:
        parser.error("--useapi-accounts takes numbers separated by commas, e.g. 1,2,4")
    positive = (
        args.upstream_batch,
        args.hold_jobs,
        args.held_repeats,
        args.useapi_jobs_per_account,
        args.money_orgs,
        args.rounds,
        *args.useapi_accounts,
    )
    if not args.useapi_accounts or min(positive) < 1:
        parser.error(
            "--upstream-batch, --hold-jobs, --held-repeats, --useapi-accounts, "
            "--useapi-jobs-per-account, --money-orgs and --rounds must be positive"
        )
    return args


def _jobs_runs(
    sup: Supervisor, stack: Stack, args: argparse.Namespace, count: int, baseline: int
) -> dict[str, Any]:
    """Phase (c) at one size: ``count`` jobs with adaptive polling, ``baseline`` with fixed."""
    from bench.jobs import run_jobs_phase

    out: dict[str, Any] = {}
    web_port = free_port()
    runs = (
        ("adaptive", count, {"POLL_STRATEGY": "adaptive"}),
        ("fixed", baseline, {"POLL_STRATEGY": "fixed", "POLL_FIXED_INTERVAL": "10"}),
    )
    for mode, n, extra in runs:
        print(f"(c) jobs: {n} jobs, {mode} polling", flush=True)
        out[mode] = run_jobs_phase(
            sup,
            stack,
            mode=mode,
            count=n,
            web_port=web_port,
            clients=args.connections,
            extra=extra,
            wait_timeout=args.wait_timeout,
        )
    return out


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so the finally-block kills the children.
    raise KeyboardInterrupt


def _single_run_lock() -> TextIO | None:
    """An exclusive lock: two runs would drop each other's database and flush each other's broker."""
    handle = (Path(tempfile.gettempdir()) / "chorus-bench.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        print(
            f"another benchmark run holds {handle.name} (pid {holder}); not starting",
            file=sys.stderr,
        )
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = _single_run_lock()
    if lock is None:
        return 2
    # Started in the background by a non-interactive shell, Python inherits SIGINT ignored;
    # restore it so that Ctrl-C (or kill -INT) always unwinds through the teardown below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.time()
    root = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    logdir = root / "logs"
    logdir.mkdir()
    use_wrk = load.wrk_path() is not None and not args.python_load
    if use_wrk:
        generator = f"wrk ({load.wrk_version()})"
    else:
        why = "chosen with --python-load" if args.python_load else "wrk is not installed"
        generator = (
            f"Python generator ({args.connections} threads, http.client keep-alive; {why}); it "
            "spends more CPU per request than wrk, CPU the servers lack on a small machine"
        )
    print(f"Chorus bench — temp dir {root}\n  load generator: {generator}", flush=True)
    sup: Supervisor | None = None
    ok = False
    try:
        print("Setup: database, Redis, catalog, API key", flush=True)
        stack = prepare(root, args.database_url, args.redis_url)
        sup = Supervisor(logdir, stack.env)
        results: dict[str, Any] = {
            "date": report.now_iso(),
            "commit": report.git_commit(),
            "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "args": {
                "jobs": args.jobs,
                "baseline_jobs": args.baseline_jobs,
                "duration": args.duration,
                "connections": args.connections,
                "clients": args.connections,
                "upstream_batch": args.upstream_batch,
                "hold_jobs": args.hold_jobs,
                "held_repeats": args.held_repeats,
                "useapi_accounts": args.useapi_accounts,
                "useapi_jobs_per_account": args.useapi_jobs_per_account,
                "money_orgs": args.money_orgs,
                "large_jobs": args.large_jobs,
                "shape_jobs": args.shape_jobs,
            },
            "generator": generator,
            "machine": report.machine(args.database_url, args.redis_url),
            "env": dict(stack.env),
            "notes": [],
        }
        settings = load_settings(stack.env)
        from app.cli import scheduler_argv, worker_argv

        results["commands"] = {
            "web": shlex.join(web_command(stack, settings.web_port)),
            "bare": "the web command line with `app.wsgi:app` replaced by `bench.bare:app`",
            "worker": shlex.join(worker_argv(settings)),
            "scheduler": shlex.join(scheduler_argv(settings)),
            "sim": shlex.join(sim_command()) + "  (gunicorn, 1 process, gthread)",
        }
        if not args.skip_upstreams:
            from bench.upstreams import PHASE_ENV

            sync_settings = load_settings({**stack.env, **PHASE_ENV})
            results["commands"]["sync worker ((d) only)"] = shlex.join(
                worker_argv(sync_settings, sync=True)
            )
        if not args.skip_http:
            from bench.http_phase import run_http_phase

            print(
                f"(a)/(b) HTTP: Chorus vs bare, {args.duration:g} s each, {args.rounds} rounds",
                flush=True,
            )
            results["http"] = run_http_phase(
                sup,
                stack,
                seconds=args.duration,
                connections=args.connections,
                use_wrk=use_wrk,
                workdir=root,
                rounds=args.rounds,
            )
        if not args.skip_jobs:
            results["jobs"] = _jobs_runs(sup, stack, args, args.jobs, args.baseline_jobs)
            if args.jobs != args.baseline_jobs:
                results["notes"].append(
                    f"the fixed-poll baseline ran {args.baseline_jobs} jobs, the adaptive run {args.jobs}"
                )
            if args.large_jobs:
                results["jobs_large"] = _jobs_runs(
                    sup, stack, args, args.large_jobs, args.large_jobs
                )
        if not args.skip_upstreams:
            from bench.upstreams import run_upstreams_phase

            results["upstreams"] = run_upstreams_phase(
                sup,
                stack,
                web_port=free_port(),
                clients=args.connections,
                batch=args.upstream_batch,
                hold=args.hold_jobs,
                ks=args.useapi_accounts,
                per_account=args.useapi_jobs_per_account,
                repeats=args.held_repeats,
            )
        if not args.skip_money:
            from bench.money import run_money_phase

            print(
                f"(e) money: POST, free vs priced model, 1 org and {args.money_orgs} orgs, "
                f"{args.duration:g} s each, {args.rounds} rounds",
                flush=True,
            )
            results["money"] = run_money_phase(
                sup,
                stack,
                seconds=args.duration,
                connections=args.connections,
                use_wrk=use_wrk,
                workdir=root,
                orgs=args.money_orgs,
                rounds=args.rounds,
            )
        if not args.skip_wait:
            from bench.wait import run_wait_phase

            print(
                f"(f) Prefer: wait: clients held by one web process, POST and GET "
                f"{args.duration:g} s each without and with them",
                flush=True,
            )
            results["wait"] = run_wait_phase(
                sup,
                stack,
                seconds=args.duration,
                connections=args.connections,
                use_wrk=use_wrk,
                workdir=root,
            )
        if not args.skip_webhooks:
            from bench.webhooks import run_webhooks_phase

            results["webhooks"] = run_webhooks_phase(
                sup,
                stack,
                web_port=free_port(),
                count=args.webhook_jobs,
                slow_share=args.webhook_slow_share,
                clients=args.connections,
                wait_timeout=args.wait_timeout,
            )
        if not args.skip_shapes:
            from bench.shapes import run_shapes_phase

            results["shapes"] = run_shapes_phase(
                logdir,
                redis_url=args.redis_url,
                count=args.shape_jobs,
                clients=args.connections,
                wait_timeout=args.wait_timeout,
            )
        results["notes"].extend(_noise_notes(results))
        results["verdicts"] = [v.as_dict() for v in report.verdicts(results)]
        results["elapsed_s"] = time.time() - began
        print_summary(results)
        if not args.no_write:
            output = args.output if args.output.is_absolute() else ROOT / args.output
            md, raw = report.write(results, output)
            print(f"\nWrote {md} and {raw}")
        ok = True
        return 0
    except PhaseError as exc:
        print(f"\nBENCH FAILED: {exc}\n", file=sys.stderr)
        if sup is not None:
            print(sup.tails(), file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - report any fault with the children's logs, then exit 1
        # Anything unexpected: the traceback, then what the children said before it happened.
        traceback.print_exc()
        if sup is not None:
            print(sup.tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: stopping every child process", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the teardown short and leave children running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sup is not None:
            sup.stop_all()
        if ok and not args.keep_temp:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"Logs and data kept in {root}", file=sys.stderr)


# Share of the machine's CPU taken by processes outside the run (and the kernel) above which
# a phase's figures are flagged as noisy.
NOISE_SHARE = 0.10


def _noise_notes(results: dict[str, Any]) -> list[str]:
    """Say which measurements shared the machine with someone else, and how much."""
    cores = os.cpu_count() or 1
    seen: list[tuple[str, float]] = []
    http = results.get("http")
    if http:
        for kind in ("post", "get"):
            for side in ("chorus", "bare"):
                cpu = http[kind][side]["cpu"]
                outside = cpu["other_s"] + cpu["steal_s"]
                seen.append((http[kind][side]["label"], outside / (cpu["wall_s"] * cores)))
    sizes = (("jobs", ""), ("jobs_large", f", {results['args']['large_jobs']:,} jobs"))
    for key, size in sizes:
        for mode, run in results.get(key, {}).items():
            cpu = run["cpu_s"]
            outside = cpu["other"] + cpu["steal"]
            seen.append((f"jobs run ({mode}{size})", outside / (cpu["wall"] * cores)))
    held = results.get("upstreams", {}).get("held_calls")
    if held:
        for name, label in (("alone_runs", "alone"), ("with_hold_runs", "beside the held calls")):
            for i, run in enumerate(held[name], start=1):
                cpu = run["cpu_s"]
                outside = cpu["other"] + cpu["steal"]
                seen.append((f"(d1) AIMLAPI batch {label} #{i}", outside / (cpu["wall"] * cores)))
    for case in results.get("money", {}).get("cases", {}).values():
        cpu = case["cpu"]
        outside = cpu["other_s"] + cpu["steal_s"]
        seen.append((f"(e) {case['label']}", outside / (cpu["wall_s"] * cores)))
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


def print_summary(results: dict[str, Any]) -> None:
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
    runs = [*results.get("jobs", {}).items(), *results.get("jobs_large", {}).items()]
    for mode, run in runs:
        print("-" * 78)
        print(
            f"  {mode}: {run['jobs_accepted']} jobs; submit {run['submit_seconds']:.1f} s; "
            f"makespan {run['makespan_s'] or 0:.1f} s vs ideal {run['ideal_s'] or 0:.1f} s; "
            f"lost {run['lost']} {run['lost_by_status'] or ''}; duplicated {run['duplicated']}"
        )
        calls, lag = run["calls_per_job"], run["lag_s"]
        print(
            f"    calls/job mean {calls['mean'] or 0:.2f} max {calls['max'] or 0:.0f}; "
            f"lag p50 {lag['p50'] or 0:.2f} s p99 {lag['p99'] or 0:.2f} s max {lag['max'] or 0:.2f} s; "
            f"peak RSS worker {run['peak_rss_mb']['worker']:.0f} MB, web {run['peak_rss_mb']['web']:.0f} MB, "
            f"sim {run['peak_rss_mb']['sim']:.0f} MB"
        )
    held = results.get("upstreams", {}).get("held_calls")
    if held:
        print("-" * 78)

        def times(runs: list[dict[str, Any]]) -> str:
            return ", ".join(f"{r['completion_s'] or 0:.2f}" for r in runs)

        print(
            f"  (d1) batch of {held['batch']}: alone {times(held['alone_runs'])} s; beside "
            f"{held['hold']} held MiniMax calls {times(held['with_hold_runs'])} s (fewest open "
            f"during: {held['open_calls_min']}); medians' ratio {held['ratio'] or 0:.3f}"
        )
    for run in results.get("upstreams", {}).get("useapi", {}).get("runs", []):
        print(
            f"  (d2) useapi K={run['k']}: {run['rate_per_s'] or 0:.3f}/s of ideal "
            f"{run['ideal_rate_per_s']:.3f}/s; idle slot gap p50 {run['slot_gap_s']['p50'] or 0:.2f} s"
        )
    money = results.get("money")
    if money:
        print("-" * 78)
        for case in money["cases"].values():
            print(
                f"  (e) {case['label']}: {case['rps']:,.0f} req/s, p50 {case['p50_ms'] or 0:.1f} ms, "
                f"p99 {case['p99_ms'] or 0:.1f} ms, non-2xx {case['non_2xx']}"
            )
    wait = results.get("wait")
    if wait:
        print("-" * 78)
        print(
            f"  (f) {wait['held_min']}–{wait['held_max']} Prefer: wait requests held by one "
            f"process (cap {wait['cap']} of {wait['threads']} threads); POST × "
            f"{wait['ratio']['post'] or 0:.2f}, GET × {wait['ratio']['get'] or 0:.2f} beside them"
        )
    hooks = results.get("webhooks")
    if hooks:
        print("-" * 78)
        lat, mixed = hooks["latency_s"], hooks["mixed"]
        print(
            f"  (g) webhooks: {hooks['delivered']} delivered; latency p50 {lat['p50'] or 0:.3f} s "
            f"p99 {lat['p99'] or 0:.3f} s; with a slow receiver {mixed['fast_per_s'] or 0:.1f}/s"
        )
    for name, shape in results.get("shapes", {}).get("shapes", {}).items():
        print("-" * 78)
        idle, hooks = shape["idle"], shape["webhooks"]
        lat = hooks["latency_s"]
        print(
            f"  (h) {name}: idle {idle['lines_per_minute']:.1f} lines/min "
            f"{idle['by_process']}; webhooks {hooks['delivered']} of {hooks['accepted']} "
            f"delivered, p50 {lat['p50'] or 0:.3f} s p99 {lat['p99'] or 0:.3f} s"
        )
    for note in results.get("notes", []):
        print(f"  note: {note}")
    print("=" * 78)


if __name__ == "__main__":
    sys.exit(main())

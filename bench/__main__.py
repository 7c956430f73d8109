"""``python -m bench``: one benchmark run, end to end. See ``bench/__init__.py``."""

from __future__ import annotations

import argparse
import fcntl
import json
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
from bench.phases import PHASES, Context
from bench.procs import ROOT, PhaseError, Supervisor
from bench.stack import prepare, sim_command, web_command
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
        "deliveries, then the shapes users run (`make run` and the Procfile); last, live event "
        "streams held open by one web process.",
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
    for phase in PHASES:
        parser.add_argument(f"--skip-{phase.name}", action="store_true", help=phase.skip_help)
        phase.add_arguments(parser)
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--output", type=Path, default=Path("docs/benchmarks.md"), help="Markdown report path"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="JSON",
        help="an earlier run's benchmarks.json: its figures are shown beside this run's",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: write the report (to --output) again from a run's benchmarks.json, "
        "with --compare if given",
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
    if args.connections < 1 or args.duration <= 0 or args.rounds < 1:
        parser.error("--connections, --duration and --rounds must be positive")
    for phase in PHASES:
        phase.check_arguments(parser, args)
    return args


def recorded_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the report quotes: the shared ones, then each phase's."""
    recorded = {"duration": args.duration, "connections": args.connections}
    recorded["clients"] = args.connections
    for phase in PHASES:
        recorded.update((name, getattr(args, name)) for name in phase.recorded)
    return recorded


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


def render(args: argparse.Namespace) -> int:
    """The report made again from the raw figures (every section reads only those)."""
    results = json.loads(args.render.read_text())
    if args.compare:
        results["compare"] = report.earlier_run(args.compare)
    output = args.output if args.output.is_absolute() else ROOT / args.output
    md, raw = report.write(results, output, PHASES)
    print(f"Wrote {md} and {raw}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
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
    results: dict[str, Any] = {}
    try:
        print("Setup: database, Redis, catalog, API key", flush=True)
        stack = prepare(root, args.database_url, args.redis_url)
        sup = Supervisor(logdir, stack.env)
        results = {
            "date": report.now_iso(),
            "commit": report.git_commit(),
            "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "args": recorded_args(args),
            "generator": generator,
            "machine": report.machine(args.database_url, args.redis_url),
            "env": dict(stack.env),
            "notes": [],
        }
        if args.compare:
            results["compare"] = report.earlier_run(args.compare)
        settings = load_settings(stack.env)
        from app.cli.processes import scheduler_argv, worker_argv

        results["commands"] = {
            "web": shlex.join(web_command(stack, settings.web_port)),
            "bare": "the web command line with `app.asgi:app` replaced by `bench.bare:asgi`",
            "worker": shlex.join(worker_argv(settings)),
            "scheduler": shlex.join(scheduler_argv(settings)),
            "sim": shlex.join(sim_command()) + "  (gunicorn, 1 process, gthread)",
        }
        ctx = Context(
            args=args,
            sup=sup,
            stack=stack,
            workdir=root,
            logdir=logdir,
            use_wrk=use_wrk,
            notes=results["notes"],
            commands=results["commands"],
        )
        for phase in PHASES:
            if not getattr(args, f"skip_{phase.name}"):
                results.update(phase.run(ctx))
        results["notes"].extend(report.noise_notes(results, PHASES))
        results["verdicts"] = [v.as_dict() for v in report.verdicts(results, PHASES)]
        results["elapsed_s"] = time.time() - began
        report.print_summary(results, PHASES)
        if not args.no_write:
            output = args.output if args.output.is_absolute() else ROOT / args.output
            md, raw = report.write(results, output, PHASES)
            print(f"\nWrote {md} and {raw}")
        ok = True
        return 0
    except PhaseError as exc:
        print(f"\nBENCH FAILED: {exc}\n", file=sys.stderr)
        if sup is not None:
            print(sup.tails(), file=sys.stderr)
        _keep_partial(results, root)
        return 1
    except Exception:  # noqa: BLE001 - report any fault with the children's logs, then exit 1
        # Anything unexpected: the traceback, then what the children said before it happened.
        traceback.print_exc()
        if sup is not None:
            print(sup.tails(), file=sys.stderr)
        _keep_partial(results, root)
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


def _keep_partial(results: dict[str, Any], root: Path) -> None:
    """The figures of the phases that ended before a failure, kept with the run's logs: a
    late phase's fault must not lose half an hour of measurements. ``--render`` writes a
    report from them."""
    if not results:
        return
    path = root / "benchmarks.partial.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"The phases measured before the failure: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Phase (h): the shapes users run, each started the way its user starts it.

``make run``: ``chorus dev`` with no DATABASE_URL and no REDIS_URL (the embedded PostgreSQL,
the filesystem broker, every process of the topology but Flower). The Procfile: ``honcho start
release``, then every long-running line, on the machine's Redis and a PostgreSQL of its own.

For each shape: once ``/healthz`` answers and the scheduler leads, and after a short settle,
the lines all its processes print over a minute with no requests (at INFO) are counted; then N
jobs, each with a ``callback_url`` on a receiver in this process, and the webhook latency is
the receiver's arrival time minus the job's ``finished_at`` (read from that shape's database).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.embedded import open_server
from bench.procs import ROOT, PhaseError, cpu_seconds, free_port, proc_table, tree_pids
from bench.stack import flush_redis
from bench.stats import describe, fmt
from bench.webhooks import Receiver, submit, wait_arrivals
from config import load_settings
from config.topology import PROCESSES

IDLE_SETTLE_S = 10.0
IDLE_WINDOW_S = 60.0
IDLE_LINES_MAX = 20  # per minute, every process of the shape together
LATENCY_P99_MAX = 2.0  # seconds from the terminal write to the receiver
# Idle lines kept in the JSON, so a reader sees what they are.
KEPT_LINES = 30
# Jobs a shape accepts at its defaults: the per-key rate limit (600 a minute) and the dev
# org's credit (100,000 fen at 100 a song) are what a user has.
MAX_SHAPE_JOBS = 500
START_TIMEOUT_S = 120.0
FLOWER_AUTH = "bench:bench-flower-secret"
# "07:04:01 worker.1 | message": honcho's prefix on every line of every process.
_HONCHO_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+?)(?:\.\d+)?\s+\| ")
_DEV_KEY = re.compile(r"API key \([^)]*\): (chs_\S+)")


@dataclass
class Shape:
    """One shape while it runs: how to reach it and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    key: str
    database_url: Callable[[], str]

    def output(self, since: int = 0) -> str:
        with self.log.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def size(self) -> int:
        return self.log.stat().st_size


def _shape_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any database, broker or Redis named, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "REDIS_KEY_PREFIX"}
    }
    bin_dir = str(Path(sys.executable).parent)  # `chorus` and `honcho` live beside python
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra)
    return env


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, as a terminal's foreground job has.
            start_new_session=True,
        )


def _stop_group(proc: subprocess.Popen[bytes], sig: int, grace: float) -> bool:
    """``sig`` to the group, SIGKILL after ``grace``; whether it stopped by itself."""
    if proc.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return False


def _wait(
    what: str, check: Callable[[], Any], shape_proc: subprocess.Popen[bytes], log: Path
) -> Any:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if shape_proc.poll() is not None:
            raise PhaseError(
                f"(h) exited with code {shape_proc.returncode} before {what}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise PhaseError(f"(h) no {what} within {START_TIMEOUT_S:.0f} s")


def _healthy(base: str) -> bool:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


# ------------------------------------------------------------------ the two shapes


@contextmanager
def make_run(logdir: Path) -> Iterator[Shape]:
    """``chorus dev`` on a var dir of its own, stopped as a terminal's Ctrl-C stops it."""
    # As root the embedded server runs as an unprivileged user, who must reach its data
    # folder: a folder of its own right under /tmp, open to traverse.
    var_root = Path(tempfile.mkdtemp(prefix="chorus-bench-make-run-"))
    var_root.chmod(0o755)
    var_dir = var_root / "var"
    web_port, sim_port = free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    runtime = logdir / "run-make-run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = _shape_env(
        {
            "CHORUS_VAR_DIR": str(var_dir),
            "PORT": str(web_port),
            "SIM_PORT": str(sim_port),
            "PUBLIC_URL": base,
            "ALLOW_PRIVATE_URLS": "true",
            "LOG_LEVEL": "INFO",
            # gunicorn's control socket: a directory of its own, as Supervisor gives each child.
            "XDG_RUNTIME_DIR": str(runtime),
        }
    )
    log = logdir / "shape-make-run.log"
    proc = _popen([sys.executable, "-m", "app.cli", "dev"], env, log)
    settings = load_settings({"CHORUS_VAR_DIR": str(var_dir)})

    def database_url() -> str:
        from app.embedded import running_url

        url = running_url(settings)
        if url is None:
            raise PhaseError("(h) the embedded PostgreSQL of `chorus dev` is not running")
        return url

    def printed_key() -> str | None:
        found = _DEV_KEY.search(log.read_text(errors="replace"))
        return found.group(1) if found else None

    try:
        key = _wait("API key", printed_key, proc, log)
        yield Shape("make run", proc, log, base, key, database_url)
    finally:
        if not _stop_group(proc, signal.SIGINT, 60.0):
            print("  (h) chorus dev did not stop on Ctrl-C within 60 s: killed", flush=True)
        _stop_orphan_postgres(settings.pgdata)
        shutil.rmtree(var_root, ignore_errors=True)


def _stop_orphan_postgres(pgdata: Path) -> None:
    """The embedded server outlives ``chorus dev`` only if that was killed: stop it then."""
    pidfile = pgdata / "postmaster.pid"
    deadline = time.monotonic() + 20
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not pidfile.exists():
        return
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGTERM)


@contextmanager
def procfile(logdir: Path, redis_url: str) -> Iterator[Shape]:
    """The Procfile under honcho: the release line on an empty database, then the rest."""
    # A PostgreSQL of the shape's own (the embedded wheel's server, with the max_connections
    # `chorus topology connections` asks for): the machine's keeps the default 100, shared
    # with whatever else runs, which the Procfile's processes may outgrow at their busiest.
    server_root = Path(tempfile.mkdtemp(prefix="chorus-bench-procfile-pg-"))
    server_root.chmod(0o755)
    server = open_server(load_settings({"CHORUS_VAR_DIR": str(server_root / "var")}))
    rendered = server.url
    flush_redis(redis_url)
    web_port, flower_port, sim_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    var_dir = Path(tempfile.mkdtemp(prefix="chorus-bench-procfile-"))
    envfile = logdir / "procfile.env"
    envfile.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in {
                "DATABASE_URL": rendered,
                "REDIS_URL": redis_url,
                "SECRET_KEY": "chorus-bench-procfile",
                "PUBLIC_URL": base,
                "PORT": str(web_port),
                "FLOWER_PORT": str(flower_port),
                "FLOWER_BASIC_AUTH": FLOWER_AUTH,
                "SIM_PORT": str(sim_port),
                "SIM_URL": f"http://127.0.0.1:{sim_port}",
                "ALLOW_PRIVATE_URLS": "true",
                "CHORUS_VAR_DIR": str(var_dir),
                "LOG_LEVEL": "INFO",
            }.items()
        )
    )
    runtime = logdir / "run-procfile"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = _shape_env({"XDG_RUNTIME_DIR": str(runtime)})
    honcho = [sys.executable, "-m", "honcho", "-f", "Procfile", "-e", str(envfile)]
    log = logdir / "shape-procfile.log"

    def run(*args: str) -> str:
        done = subprocess.run(
            [*honcho, *args], cwd=ROOT, env=env, capture_output=True, timeout=180, check=False
        )
        if done.returncode != 0:
            raise PhaseError(
                f"(h) honcho {' '.join(args)} exited with {done.returncode}:\n"
                + (done.stdout + done.stderr).decode(errors="replace")[-4000:]
            )
        return done.stdout.decode(errors="replace").strip()

    release = [p.name for p in PROCESSES if p.one_shot]
    long_running = [p.name for p in PROCESSES if not p.one_shot]
    proc: subprocess.Popen[bytes] | None = None

    try:
        with log.open("ab") as out:
            out.write(run("start", *release).encode() + b"\n===== release done\n")
        proc = _popen([*honcho, "start", *long_running], env, log)
        shape = Shape("Procfile", proc, log, base, "", lambda: rendered)
        _wait("answer on /healthz", lambda: _healthy(base), proc, log)
        shape.key = run("run", "sh", "-c", "chorus keys create --org bench-procfile")
        run("run", "sh", "-c", "chorus balance add --org bench-procfile 100000")
        yield shape
    finally:
        if proc is not None and not _stop_group(proc, signal.SIGTERM, 30.0):
            print("  (h) honcho did not stop on SIGTERM within 30 s: killed", flush=True)
        server.close()
        shutil.rmtree(server_root, ignore_errors=True)
        shutil.rmtree(var_dir, ignore_errors=True)


# ------------------------------------------------------------------ measuring


def _process_of(line: str) -> str:
    found = _HONCHO_LINE.match(line)
    return found.group(1) if found else "(other)"


def _tree_cpu(root: int) -> float:
    return cpu_seconds(tree_pids(root, proc_table()))


def measure_idle(shape: Shape) -> dict[str, Any]:
    """Lines printed over IDLE_WINDOW_S with no requests, after the shape settled."""
    _wait("answer on /healthz", lambda: _healthy(shape.base), shape.proc, shape.log)
    _wait(
        "scheduler leading",
        lambda: "scheduler: leading" in shape.output(),
        shape.proc,
        shape.log,
    )
    time.sleep(IDLE_SETTLE_S)
    start, cpu_before = shape.size(), _tree_cpu(shape.proc.pid)
    began = time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    if shape.proc.poll() is not None:
        raise PhaseError(f"(h) {shape.name} exited while idle:\n{shape.output()[-4000:]}")
    window = time.monotonic() - began
    cpu = _tree_cpu(shape.proc.pid) - cpu_before
    lines = [line for line in shape.output(start).splitlines() if line.strip()]
    by_process = Counter(_process_of(line) for line in lines)
    return {
        "settle_s": IDLE_SETTLE_S,
        "window_s": window,
        "lines": len(lines),
        "lines_per_minute": len(lines) * 60.0 / window,
        "by_process": dict(by_process.most_common()),
        "first_lines": lines[:KEPT_LINES],
        "cpu_s": cpu,
        "cpu_pct_of_one_core": 100.0 * cpu / window,
    }


def measure_webhooks(shape: Shape, count: int, clients: int, timeout: float) -> dict[str, Any]:
    """``count`` jobs with a callback on a receiver here; latency = arrival − finished_at."""
    port = int(shape.base.rsplit(":", 1)[1])
    with Receiver() as receiver:
        began = time.time()
        ids = submit(port, shape.key, [receiver.url] * count, clients)
        submitted = time.time() - began
        wait_arrivals(receiver, len(ids), timeout)
        with receiver.lock:
            arrivals = list(receiver.arrivals)
    engine = sa.create_engine(shape.database_url())
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, status, finished_at FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids},
            ).all()
    finally:
        engine.dispose()
    ends = {r.id: r.finished_at.timestamp() for r in rows if r.finished_at is not None}
    statuses = Counter(r.status for r in rows)
    first: dict[str, float] = {}
    for arrived, job_id in arrivals:
        first.setdefault(job_id, arrived)
    latencies = [first[j] - ends[j] for j in ids if j in first and j in ends]
    return {
        "jobs": count,
        "accepted": len(ids),
        "submit_s": submitted,
        "statuses": dict(statuses),
        "delivered": sum(1 for j in ids if j in first),
        "lost": sum(1 for j in ids if j not in first),
        "duplicates": len(arrivals) - len(first),
        "latency_s": describe(latencies),
    }


def run_shapes_phase(
    logdir: Path,
    *,
    redis_url: str,
    count: int,
    clients: int,
    wait_timeout: float,
) -> dict[str, Any]:
    results: dict[str, Any] = {"jobs": count, "idle_target": IDLE_LINES_MAX, "shapes": {}}
    starts: dict[str, Callable[[], contextlib.AbstractContextManager[Shape]]] = {
        "make run": lambda: make_run(logdir),
        "Procfile": lambda: procfile(logdir, redis_url),
    }
    for name, start in starts.items():
        print(f"(h) shapes: {name}: start, idle {IDLE_WINDOW_S:g} s, {count} jobs", flush=True)
        began = time.monotonic()
        with start() as shape:
            idle = measure_idle(shape)
            print(
                f"    idle: {idle['lines']} lines in {idle['window_s']:.0f} s "
                f"({idle['lines_per_minute']:.1f}/min) {idle['by_process']}",
                flush=True,
            )
            hooks = measure_webhooks(shape, count, clients, wait_timeout)
            lat = hooks["latency_s"]
            print(
                f"    webhooks: {hooks['delivered']} of {hooks['accepted']} delivered; "
                f"p50 {fmt(lat['p50'], 3)} s p99 {fmt(lat['p99'], 3)} s",
                flush=True,
            )
        results["shapes"][name] = {
            "idle": idle,
            "webhooks": hooks,
            "elapsed_s": time.monotonic() - began,
        }
    return results

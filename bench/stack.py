"""The system under test: a fresh database, Redis db, catalog and key, and Chorus's processes."""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app import dbmigrate
from app.catalog import loader
from app.cli.processes import scheduler_argv, web_argv, worker_argv
from app.db import Database
from app.tenancy.keys import create_key
from bench.procs import Child, PhaseError, Supervisor, free_port, wait_http
from config import load_settings

MODEL = "music-2.6"
CATEGORY = "music_gen"
SIM_LATENCY = 60.0
SIM_JITTER = 10.0

# The bench catalog: one model on the simulator whose expected time matches the simulator's.
CATALOG = textwrap.dedent(
    f"""\
    categories:
      - id: {CATEGORY}
        name: Music generation
    accounts:
      - id: sim-aimlapi
        provider: aimlapi
        base_url: "{{sim_url}}"
        max_in_flight: 100000
    models:
      - name: {MODEL}
        upstream_model: minimax/music-2.6
        expected_seconds: {SIM_LATENCY:g}
        expected_spread: {SIM_JITTER:g}
        deadline_seconds: 600
        limits: {{prompt: {{min: 0, max: 2000}}, lyrics: {{min: 1, max: 3500}}, reference_audio: none}}
        routes: [{{category: {CATEGORY}, accounts: [sim-aimlapi]}}]
    """
)

LYRICS = "[Verse]\nWalking down the street\nFeeling the beat\n[Chorus]\nDancing in the sun"

# Process settings, chosen for the 2-core benchmark machine (recorded in the report):
# - web: gunicorn, 2 processes (one per core, an event loop each) x 8 threads;
# - worker: Celery prefork with 2 processes (one per core; the GIL holds each to one), each
#   with IO_THREADS=16: a batch's status calls go out 16 at a time from one thread, and
#   submits and downloads run on 16 threads, enough to overlap the simulator's and Postgres's
#   round trips. Not the default 32: every I/O thread holds a Postgres connection, and 2 x 32
#   plus the web's 2 x 8 come close to Postgres's max_connections (100, shared with everything
#   else on the machine); a run at 32 was refused connections ("too many clients") and lost
#   jobs. 4 processes x 8 threads did no better in phase (c): on 2 cores the processes only
#   take CPU from each other and from the simulator;
# - the scheduler leases up to 500 due jobs per round, 0.5 s ahead (defaults).
PROCESS_SETTINGS: dict[str, str] = {
    "WEB_CONCURRENCY": "2",
    "WEB_THREADS": "8",
    "WORKER_CONCURRENCY": "2",
    "IO_THREADS": "16",
    "CLAIM_BATCH": "500",
    "LOG_LEVEL": "INFO",
    # The per-key rate limit (default 600/min) and the per-org cap on active jobs (default
    # 1000) would refuse most of a 2,000-job burst: raised far out of the way, so the run
    # measures throughput rather than the limits. Both checks still run on every POST.
    "RATE_LIMIT": "10000000 per minute",
    "ORG_MAX_ACTIVE_JOBS": "10000000",
}


@dataclass
class Stack:
    """What every phase shares: URLs, ports, the environment and the API key."""

    root: Path  # the run's temp dir
    database_url: str
    redis_url: str
    env: dict[str, str]
    api_key: str = ""
    sim_port: int = 0
    db: Database | None = field(default=None, repr=False)

    @property
    def var_dir(self) -> Path:
        return Path(self.env["CHORUS_VAR_DIR"])

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def database(self) -> Database:
        if self.db is None:
            self.db = Database(load_settings(self.env))
        return self.db


def build_env(root: Path, database_url: str, redis_url: str, sim_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CHORUS_VAR_DIR": str(root / "var"),
        "SECRET_KEY": "chorus-bench-secret",
        "SIM_HOST": "127.0.0.1",
        "SIM_PORT": str(sim_port),
        "SIM_URL": f"http://127.0.0.1:{sim_port}",
        # Small WAVs so that 10,000 finished jobs fit on disk (2 s mono 16-bit, ~128 KB each).
        "SIM_AUDIO_SECONDS": "2",
        "SIM_LATENCY": f"{SIM_LATENCY:g}",
        "SIM_JITTER": f"{SIM_JITTER:g}",
        **PROCESS_SETTINGS,
    }


def prepare(root: Path, database_url: str, redis_url: str) -> Stack:
    """A fresh database (dropped with FORCE, created, migrated), Redis flushed, catalog, key."""
    url = make_url(database_url)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    finally:
        admin.dispose()
    flush_redis(redis_url)
    sim_port = free_port()
    env = build_env(root, database_url, redis_url, sim_port)
    stack = Stack(root=root, database_url=database_url, redis_url=redis_url, env=env)
    stack.sim_port = sim_port
    stack.var_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(env)
    dbmigrate.upgrade(settings)
    catalog_file = root / "catalog.yaml"
    catalog_file.write_text(CATALOG)
    db = stack.database()
    with db.transaction() as session:
        loader.load(session, loader.read(catalog_file))
        stack.api_key = create_key(session, "bench", label="chorus bench")
    return stack


def flush_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def reset_jobs(stack: Stack) -> None:
    """Empty the jobs table, the broker and the stored audio between runs."""
    with stack.database().engine.begin() as conn:
        # CASCADE: webhook deliveries (and their attempts) point at jobs. Their stored events
        # (live streams) name them without a key.
        conn.execute(sa.text("TRUNCATE jobs, job_events CASCADE"))
    flush_redis(stack.redis_url)
    shutil.rmtree(stack.var_dir / "audio", ignore_errors=True)


# ------------------------------------------------------------------ processes


def web_command(stack: Stack, port: int, extra: dict[str, str] | None = None) -> list[str]:
    return web_argv(load_settings({**stack.env, **(extra or {}), "PORT": str(port)}))


def bare_command(chorus_argv: list[str], port: int) -> list[str]:
    """Chorus's own gunicorn command line with only the bind and the app swapped."""
    argv = list(chorus_argv)
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    argv[argv.index("app.asgi:app")] = "bench.bare:asgi"
    return argv


def start_web(sup: Supervisor, stack: Stack, name: str, port: int, extra: dict[str, str]) -> Child:
    child = sup.start(name, web_command(stack, port, extra), {**extra, "PORT": str(port)})
    wait_http(port, "/healthz", child)
    return child


def sim_command() -> list[str]:
    return [sys.executable, "-m", "app.cli", "sim"]


def start_sim(sup: Supervisor, stack: Stack, extra: dict[str, str] | None = None) -> Child:
    child = sup.start("sim", sim_command(), extra)
    wait_http(stack.sim_port, "/_sim/health", child)
    return child


def start_worker(sup: Supervisor, stack: Stack, extra: dict[str, str]) -> Child:
    argv = worker_argv(load_settings({**stack.env, **extra}))
    return sup.start("worker", argv, extra)


def start_sync_worker(sup: Supervisor, stack: Stack, extra: dict[str, str]) -> Child:
    """``chorus worker --sync``: the thread-pool worker that holds MiniMax's calls open."""
    argv = worker_argv(load_settings({**stack.env, **extra}), sync=True)
    return sup.start("sync", argv, extra)


def start_webhooks_worker(sup: Supervisor, stack: Stack, extra: dict[str, str]) -> Child:
    """``chorus worker --webhooks``: the worker that sends webhook deliveries."""
    argv = worker_argv(load_settings({**stack.env, **extra}), webhooks=True)
    return sup.start("webhooks", argv, extra)


def start_scheduler(sup: Supervisor, stack: Stack, extra: dict[str, str]) -> Child:
    argv = scheduler_argv(load_settings({**stack.env, **extra}))
    return sup.start("scheduler", argv, extra)


def wait_worker_ready(
    sup: Supervisor, stack: Stack, timeout: float = 60.0, *, sync: bool = False
) -> None:
    """Until the worker (and, with ``sync``, the sync worker too) answers a broadcast ping and
    the scheduler leads."""
    from celery import Celery

    probe = Celery("bench-probe", broker=stack.redis_url)
    deadline = time.monotonic() + timeout
    names = ["worker", "scheduler", "sync"] if sync else ["worker", "scheduler"]
    try:
        while time.monotonic() < deadline:
            sup.check_alive(names)
            replies: list[Any] = probe.control.ping(timeout=1.0) or []
            # Each reply is {"<hostname>": {"ok": "pong"}}; the sync worker is "sync@<host>".
            hosts = [name for reply in replies for name in reply]
            # The scheduler answers pings too; the job worker is every other host.
            job_workers = [h for h in hosts if not h.startswith(("sync@", "scheduler@"))]
            workers_up = bool(job_workers) and (
                not sync or any(h.startswith("sync@") for h in hosts)
            )
            scheduler_log = (sup.logdir / "scheduler.log").read_text(errors="replace")
            if workers_up and "scheduler: leading" in scheduler_log.rsplit("===== start", 1)[-1]:
                return
            time.sleep(0.5)
    finally:
        probe.close()
    raise PhaseError(f"worker or scheduler not ready within {timeout:.0f}s")


def load_catalog(stack: Stack, name: str, text: str) -> None:
    """Upsert a phase's own accounts and models beside the bench catalog (kept in the temp dir)."""
    path = stack.root / f"catalog-{name}.yaml"
    path.write_text(text)
    with stack.database().transaction() as session:
        loader.load(session, loader.read(path))

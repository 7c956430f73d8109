"""Fixtures: real Postgres and Redis, a real simulator, and real worker processes.

The suite runs against the Postgres and Redis named by TEST_DATABASE_URL / TEST_REDIS_URL
(defaults: a ``chorus_test`` database on 127.0.0.1:5432 and Redis db 15 on 127.0.0.1:6379).
The database is created fresh and migrated once per session; tables are emptied per test.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg2.extensions
import pytest
import redis
import requests
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import dbmigrate
from app.catalog import loader
from app.db import Database
from app.jobs.models import Job
from app.tenancy.keys import create_key
from config import Settings, load_settings
from config.settings import DEFAULT_CATALOG
from tests.audio import Server

ROOT = Path(__file__).resolve().parents[1]
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/chorus_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The RabbitMQ of the tests that run Chorus on it; each run takes a virtual host of its own.
TEST_AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_PREFIX = f"chorus-test-{os.getpid()}:"


def clear_redis(url: str) -> None:
    """Delete this run's keys (and nothing of another run sharing the database)."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# A test starts from what a fresh migration leaves: every table empty (alembic's own aside)
# and every sequence back at 1. DELETE, not TRUNCATE: on tables of a few rows it costs about a
# tenth (TRUNCATE makes new files for each table and index and syncs them), and it runs before
# most tests. Foreign keys are not checked meanwhile (replica role), so no order is needed.
_WIPE = """
SET LOCAL session_replication_role = replica;
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT tablename FROM pg_tables
                WHERE schemaname = current_schema() AND tablename <> 'alembic_version'
    LOOP
        EXECUTE 'DELETE FROM ' || quote_ident(name);
    END LOOP;
END $$;
SELECT setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname = current_schema();
"""


@contextmanager
def empty_database(suffix: str) -> Iterator[str]:
    """A database with no tables, named after the test database plus ``suffix``; dropped after."""
    base = make_url(TEST_DATABASE_URL)
    url = base.set(database=f"{base.database}_{suffix}")
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))

    drop()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        drop()
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this session's own (so concurrent runs never meet), migrated from empty."""
    with empty_database(str(os.getpid())) as url:
        dbmigrate.upgrade(load_settings({"DATABASE_URL": url}))
        _copy_catalog_aside(url)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.ping()
    client.close()
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this session's own (so concurrent runs never meet), as a
    CELERY_BROKER_URL; skips the test where none can be had."""
    from tests import rabbitmq

    why = rabbitmq.unavailable(TEST_AMQP_URL)
    if why:
        pytest.skip(why)
    with ExitStack() as stack:
        try:
            url = stack.enter_context(
                rabbitmq.private_vhost(TEST_AMQP_URL, f"chorus-test-{os.getpid()}")
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"no RabbitMQ virtual host (start it: rabbitmq-server -detached): {exc}")
        yield url


def clear_broker(env: dict[str, str]) -> None:
    """Empty this run's queues (and Redis keys) on the broker ``env`` names."""
    clear_redis(env["REDIS_URL"])
    broker = env.get("CELERY_BROKER_URL", "")
    if broker.startswith("amqp"):
        from tests import rabbitmq

        rabbitmq.purge(broker)


@pytest.fixture(scope="module")
def isolated_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """CHORUS_VAR_DIR in a temporary folder for a module's tests: importing the WSGI app or the
    Celery app reads settings, and any state they create stays out of the working tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHORUS_VAR_DIR", str(tmp_path_factory.mktemp("var")))
        yield


def chorus_env(database_url: str, redis_url: str, var_dir: Path) -> dict[str, str]:
    """The environment every Chorus process of a test gets, on these servers."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CHORUS_VAR_DIR": str(var_dir),
        "SECRET_KEY": "test-secret",
        # The processes that write links refuse to start without it.
        "PUBLIC_URL": "http://127.0.0.1:8000",
        "LEASE_SECONDS": "8",
        "UPSTREAM_READ_TIMEOUT": "3",
        "UPSTREAM_CONNECT_TIMEOUT": "2",
        "SIM_LATENCY": "0.6",
        "SIM_JITTER": "0.1",
        "SIM_AUDIO_SECONDS": "2",
        "IO_THREADS": "8",
        # The suite's processes share one server's 100 connections with each other (two xdist
        # workers, each starting stacks): a pool keeps only a few open once idle.
        "DATABASE_POOL_IDLE": "2",
        # Generous: tests that are not about rate limits must not meet one.
        "RATE_LIMIT": "100000 per minute",
        # This run's keys only: concurrent test runs may share the Redis database.
        "REDIS_KEY_PREFIX": REDIS_PREFIX,
    }


@pytest.fixture
def env(
    database_url: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, str]:
    """The environment of a test's Chorus: every process started by the test gets it.

    ``@pytest.mark.env(NAME="value")`` overrides it for one test, before anything reads it.
    """
    overrides = {k: v for m in request.node.iter_markers("env") for k, v in m.kwargs.items()}
    return {**chorus_env(database_url, redis_url, tmp_path / "var"), **overrides}


@contextmanager
def own_chorus(name: str, redis_url: str, tmp: Path) -> Iterator[tuple[dict[str, str], Database]]:
    """A Chorus environment on a database of its own (no test's TRUNCATE reaches it), migrated
    and with the default catalog: for a module's one long-lived server. Dropped after."""
    with empty_database(f"{os.getpid()}_{name}") as url:
        env = chorus_env(url, redis_url, tmp / "var")
        settings = load_settings(env)
        dbmigrate.upgrade(settings)
        database = Database(settings)
        try:
            load_catalog(database, settings)
            yield env, database
        finally:
            database.engine.dispose()


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    with database.engine.begin() as conn:
        conn.exec_driver_sql(_WIPE)
    yield database
    close_pools(database)


def close_pools(database: Database) -> None:
    """Close a Database's pooled connections now (its ``dispose`` only forgets them, for a
    forked child), not whenever the garbage collector gets to them: the suite's two workers
    share the server's 100 connections with the process stacks they start."""
    database.engine.dispose()
    database.reader.dispose()


@functools.cache
def _read_catalog(path: Path) -> dict[str, Any]:
    data = loader.read(path)
    for model in data["models"]:
        model["expected_seconds"], model["expected_spread"] = 0.6, 0.2
    return data


def load_catalog(db: Database, settings: Settings) -> dict[str, Any]:
    """The default catalog (every model on the simulator), with test-sized timings."""
    data = copy.deepcopy(_read_catalog(settings.catalog_file))
    with db.transaction() as session:
        loader.load(session, data)
    return data


# What the catalog's loading leaves in a database, copied aside once per session (schema
# catalog_copy) and put back for each test that wants it: a few INSERT ... SELECT instead of
# the loader's seventy-odd statements. The loader itself is tested in tests/unit/catalog.
_CATALOG_TABLES = ("categories", "upstream_accounts", "models", "routes")


def _copy_catalog_aside(database_url: str) -> None:
    settings = load_settings({"DATABASE_URL": database_url})
    database = Database(settings)
    try:
        load_catalog(database, settings)
        with database.engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA catalog_copy")
            for table in _CATALOG_TABLES:
                conn.exec_driver_sql(f"CREATE TABLE catalog_copy.{table} AS TABLE {table}")
            conn.exec_driver_sql(_WIPE)
    finally:
        database.engine.dispose()


_PUT_CATALOG_BACK = """
SET LOCAL session_replication_role = replica;
INSERT INTO categories SELECT * FROM catalog_copy.categories;
INSERT INTO upstream_accounts SELECT * FROM catalog_copy.upstream_accounts;
INSERT INTO models SELECT * FROM catalog_copy.models;
INSERT INTO routes SELECT * FROM catalog_copy.routes;
SELECT setval('models_id_seq', (SELECT max(id) FROM models));
SELECT setval('routes_id_seq', (SELECT max(id) FROM routes));
"""


@pytest.fixture
def catalog(db: Database, settings: Settings, database_url: str) -> dict[str, Any]:
    same_database = make_url(cast(str, settings.database_url)).database == (
        make_url(database_url).database
    )
    if not same_database or settings.catalog_file != DEFAULT_CATALOG:
        return load_catalog(db, settings)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(_PUT_CATALOG_BACK)
    return copy.deepcopy(_read_catalog(settings.catalog_file))


CREDIT = 1_000_000  # minor units given to each test org: plenty for any test's jobs


def funded_key(db: Database, org: str, amount: int = CREDIT) -> str:
    from app.money import ledger
    from app.tenancy.keys import get_or_create_org

    with db.transaction() as session:
        key = create_key(session, org)
        if amount:
            ledger.credit(session, get_or_create_org(session, org).id, "CNY", amount)
        return key


@pytest.fixture
def api_key(db: Database) -> str:
    return funded_key(db, "acme")


@pytest.fixture
def other_key(db: Database) -> str:
    return funded_key(db, "globex")


@pytest.fixture
def app(settings: Settings, db: Database) -> Iterator[Any]:
    from app.web import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    yield flask_app
    close_pools(flask_app.extensions["chorus"].db)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def script() -> Any:
    """A scriptable upstream (``tests.unit.providers.fake_adapter``) for an in-process ``engine``."""
    from tests.unit.providers.fake_adapter import Script

    return Script()


@pytest.fixture
def engine(settings: Settings, db: Database, script: Any) -> Any:
    """The job engine on the test's database, its upstream ``script``: no HTTP, no Celery."""
    from app.jobs.engine import Engine
    from app.wiring import writer

    return Engine(settings, db, adapter_factory=script.factory, transitions=writer(db, settings))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


GOOD_BODY = {
    "model": "music-2.6",
    "catelogid": "music_gen",
    "prompt": "Pop music, happy, suitable for a sunny day",
    "lyrics": "[Verse]\nWalking down the street\nFeeling the beat\n[Chorus]\nDancing in the sun",
}


# ------------------------------------------------------------------ processes


@pytest.fixture
def sim(settings: Settings, env: dict[str, str]) -> Iterator[str]:
    """A real simulator over a real socket; its URL is put into ``env`` for other processes."""
    from app.sim.server import start_background

    url, shutdown = start_background(settings)
    env["SIM_URL"] = url
    yield url
    shutdown()


@pytest.fixture(scope="module")
def audio_server() -> Iterator[Server]:
    """A real HTTP server with canned audio routes (``tests.audio.Server``), one per module."""
    srv = Server()
    srv.thread.start()
    yield srv
    srv.server.shutdown()
    srv.thread.join(timeout=5)


# The server's view of its sessions, for tests that watch what they are doing.
ACTIVITY = sa.table(
    "pg_stat_activity", sa.column("datname"), sa.column("state"), sa.column("wait_event_type")
)


def backends(db: Database, *conditions: sa.ColumnElement[bool]) -> int:
    """How many sessions of this database meet ``conditions`` (on ``ACTIVITY``)."""
    with db.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(ACTIVITY)
        return int(
            conn.scalar(query.where(ACTIVITY.c.datname == sa.func.current_database(), *conditions))
            or 0
        )


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    """A real HTTP server on a free local port, for webhook deliveries to reach."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def lock_waiters(db: Database) -> int:
    """Sessions of this database waiting on a row lock: how a test knows a race is on."""
    return backends(db, ACTIVITY.c.wait_event_type == "Lock")


def commit_once_blocked(db: Database, holder: Session, contender: Callable[[], None]) -> None:
    """Run ``contender`` in a thread until it waits on a row lock (``holder`` holds it), then
    commit ``holder`` and let the contender finish: the race the database must settle."""
    thread = threading.Thread(target=contender)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive() and not lock_waiters(db):
        time.sleep(0.05)
    holder.commit()
    holder.close()
    thread.join(timeout=60)
    assert not thread.is_alive()


@contextmanager
def statements_on(**engines: sa.Engine) -> Iterator[dict[str, list[str]]]:
    """Every statement a cursor of each named engine's pool sends meanwhile, by name.

    Recorded by psycopg2 itself (a cursor class set on each connection while it is checked
    out), so statements run through SQLAlchemy and straight on a pooled connection's cursor
    (``HotStatement``) both count. A BEGIN or ROLLBACK that psycopg2 sends on its own is not
    a cursor's statement: a test checks autocommit for that.
    """
    seen: dict[str, list[str]] = {name: [] for name in engines}
    hooks = []
    for name, engine in engines.items():

        class Recording(psycopg2.extensions.cursor):
            log = seen[name]

            def execute(self, query: Any, vars: Any = None) -> None:
                self.log.append(query.decode() if isinstance(query, bytes) else query)
                super().execute(query, vars)

        def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any, cls: type = Recording) -> None:
            dbapi_conn.cursor_factory = cls

        def on_checkin(dbapi_conn: Any, _record: Any) -> None:
            if dbapi_conn is not None:
                dbapi_conn.cursor_factory = psycopg2.extensions.cursor

        for event, hook in (("checkout", on_checkout), ("checkin", on_checkin)):
            sa.event.listen(engine.pool, event, hook)
            hooks.append((engine.pool, event, hook))
    try:
        yield seen
    finally:
        for pool, event, hook in hooks:
            sa.event.remove(pool, event, hook)


class Processes:
    """Child processes of a test, killed at teardown, with their output kept for failures."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen[bytes]:
        from app.cli.processes import worker_argv

        argv = worker_argv(load_settings(self.env))
        argv[argv.index("--concurrency") + 1] = str(concurrency)
        argv += ["--hostname", f"{name}@%h", "--pool", "prefork"]
        return self.start(name, argv)

    def sync_worker(self, name: str = "sync") -> subprocess.Popen[bytes]:
        from app.cli.processes import worker_argv

        argv = worker_argv(load_settings(self.env), sync=True)
        argv[argv.index("--hostname") + 1] = f"{name}@%h"
        return self.start(name, argv)

    def webhooks_worker(self, name: str = "webhooks") -> subprocess.Popen[bytes]:
        from app.cli.processes import worker_argv

        argv = worker_argv(load_settings(self.env), webhooks=True)
        argv[argv.index("--hostname") + 1] = f"{name}@%h"
        return self.start(name, argv)

    def scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        from app.cli.processes import scheduler_argv

        return self.start(name, scheduler_argv(load_settings(self.env)))

    def wait_first_round(self, worker: str = "worker") -> None:
        """Until ``worker`` has run the maintenance tasks the scheduler sends when it leads."""
        wait_for(
            lambda: (
                "purge_idempotency_keys" in self.log(worker) and "succeeded" in self.log(worker)
            ),
            90,
            interval=0.5,
            message="the worker to run the scheduler's first task",
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_all(self) -> None:
        """SIGKILL to every process group at once: a teardown asserts nothing, and what a test
        left (leases, broker messages, rows) is cleared before the next one starts."""
        running = [p for p in self.procs.values() if p.poll() is None]
        self.procs.clear()
        for proc in running:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in running:
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        """SIGTERM to every process group at once, then SIGKILL to what is still there after
        STOP_SECONDS: for a test that reads what the processes wrote once they have ended."""
        running = [p for p in self.procs.values() if p.poll() is None]
        self.procs.clear()
        for proc in running:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in running:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


# How long a test's processes get to end by themselves when it is over.
STOP_SECONDS = 5.0


@pytest.fixture
def procs(
    env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Processes]:
    # Messages left by an earlier test's workers must not reach this test's.
    clear_broker(env)
    manager = Processes(env, tmp_path)
    yield manager
    manager.kill_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("*.log")):
            sys.stderr.write(
                f"\n----- {log.name} (tail) -----\n{log.read_text(errors='replace')[-6000:]}\n"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def job_rows(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(sa.select(Job).order_by(Job.id)))


def sim_record(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/_sim/record", timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body

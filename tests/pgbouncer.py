"""A pgbouncer of a test's own, in front of the test database, with the shipped settings.

It runs deploy/pgbouncer/pgbouncer.ini's [pgbouncer] section (transaction mode and all), with
only what a test machine needs changed: its address (a free loopback port), its login (the
test database's user, trusted), and a pool of a few server connections, so that many clients
share each one and anything that leans on a session would show.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg2
from sqlalchemy.engine import URL, make_url

from tests.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini"
# Server connections for each database: fewer than the processes of a test hold.
POOL_SIZE = 3


def binary() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")


def shipped_settings() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SHIPPED)
    return dict(parser["pgbouncer"])


class PgBouncer:
    def __init__(self, server_url: str, folder: Path) -> None:
        found = binary()
        if found is None:
            raise RuntimeError("pgbouncer is not installed")
        self.binary = found
        self.server = make_url(server_url)
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        """``server_url`` with its host and port replaced by this pgbouncer's."""
        pooled: URL = self.server.set(host="127.0.0.1", port=self.port)
        if database is not None:
            pooled = pooled.set(database=database)
        return pooled.render_as_string(hide_password=False)

    def start(self) -> None:
        user = self.server.username or "postgres"
        settings = {
            **shipped_settings(),
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.folder / "userlist.txt"),
            "admin_users": user,
            "default_pool_size": str(POOL_SIZE),
            "reserve_pool_size": "0",
        }
        # Every database of the test server, under its own name.
        target = f"host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}"
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self.folder / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.folder / "userlist.txt").write_text(f'"{user}" "{self.server.password or ""}"\n')
        argv = [self.binary, str(self.folder / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # It refuses to run as root: it drops to an unprivileged user, who must read these.
            argv[1:1] = ["-u", _unprivileged()]
            self.folder.chmod(0o755)
        log = (self.folder / "pgbouncer.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()[-2000:]}")
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def admin(self, command: str) -> list[dict[str, object]]:
        """A command of pgbouncer's admin console (``SHOW STATS``, ``SHOW CONFIG``…), its rows."""
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=self.server.username or "postgres",
            connect_timeout=2,
        )
        try:
            conn.autocommit = True  # the console knows no transactions
            with conn.cursor() as cursor:
                cursor.execute(command)
                names = [c[0] for c in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def _unprivileged() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user for pgbouncer to run as")

"""A redis-server of a test's own, on a free port, that the test may kill and start again.

The shared Redis serves every other test run on the machine, so an outage is staged on a
private server. ``restart`` brings it back on the same port, keeping its data (an
append-only file, written before every reply) or starting empty.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.serving import free_port


class RedisServer:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None, "already running"
        log = (self.folder / "redis.log").open("ab")
        # Every write reaches the file before the reply: a restart "with its data" finds
        # each message that was acknowledged to a producer.
        persistence = ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            [self.binary, *where, *persistence],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + 30
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {log.name}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, *, keep_data: bool, down_for: float = 1.0) -> None:
        """Kill the server (SIGKILL), stay down ``down_for`` seconds, start it again on the
        same port, with the data it had or none."""
        self.stop()
        if not keep_data:
            for path in self.folder.iterdir():
                if path.name != "redis.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        time.sleep(down_for)
        self.start()

    def hlen(self, key: str) -> int:
        """The size of a hash (0 while the server is down)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return int(client.hlen(key))
        except redis.ConnectionError:
            return 0
        finally:
            client.close()

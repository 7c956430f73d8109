"""The doorbell: tells the scheduler that work became due sooner than it can know.

The scheduler sleeps until the earliest time it knows of. A new job, a worker's write that
makes a job due sooner, or a new webhook delivery is news to it, so the process that
committed it rings: ``ring()`` only sets a flag, and a background thread of this process
sends ``NOTIFY chorus_due`` on a connection of its own, with autocommit.

The NOTIFY is deliberately not part of the writer's transaction: Postgres serialises the
commits of notifying transactions on one global lock held through the WAL flush, which would
cap the API's submit rate. Rings close together are coalesced: at most one NOTIFY is in
flight per process, and the thread pauses a few milliseconds between them. A lost ring (the
database briefly down) costs only latency: the scheduler wakes at its safety cap anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "chorus_due"
# The pause between two NOTIFYs of one process: rings meanwhile make one more, not many.
COALESCE_SECONDS = 0.005
# How long a listener on an event loop (``hear``) waits before connecting again.
RECONNECT_SECONDS = 5.0


_bells: dict[str, Doorbell] = {}
_bells_lock = threading.Lock()


def doorbell(database_url: str) -> Doorbell:
    """The process's doorbell for this database (one thread and connection however many ask)."""
    with _bells_lock:
        found = _bells.get(database_url)
        if found is None:
            found = _bells[database_url] = Doorbell(database_url)
        return found


class Doorbell:
    """Rings the scheduler; its thread starts on the first ring, in the ringing process."""

    def __init__(self, database_url: str) -> None:
        self._url = make_url(database_url)
        self._pid = 0
        self._rung = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ring(self) -> None:
        if self._pid != os.getpid():
            self._start()
        self._rung.set()

    def _start(self) -> None:
        with self._lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            # A forked child gets its own thread and connection, never its parent's.
            self._rung = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._rung,), name="chorus-doorbell", daemon=True
            )
            self._thread.start()
            self._pid = pid

    def _run(self, rung: threading.Event) -> None:
        conn: Any = None
        while True:
            rung.wait()
            rung.clear()
            try:
                if conn is None or conn.closed:
                    conn = connect(self._url)
                with conn.cursor() as cursor:
                    cursor.execute(f"NOTIFY {CHANNEL}")
            except Exception as exc:  # noqa: BLE001 - a lost ring only delays; never kill the thread
                log.debug("doorbell: NOTIFY failed (%s); the scheduler's safety cap covers it", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):  # already broken
                        conn.close()
                conn = None
            # Rings during this pause are answered by one NOTIFY after it.
            time.sleep(COALESCE_SECONDS)


def connect(url: Any, **extra: Any) -> Any:
    """A psycopg2 connection of its own (outside any pool), in autocommit."""
    kind = url.get_dialect()
    dbapi = kind.import_dbapi()
    cargs, cparams = kind(dbapi=dbapi).create_connect_args(url)
    conn = dbapi.connect(*cargs, **{**cparams, **extra})
    conn.autocommit = True
    return conn


def ring_now(database_url: str) -> None:
    """One NOTIFY at once, for a short-lived process (a CLI command) that cannot wait."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    conn = connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")
    finally:
        conn.close()


async def hear(database_url: str, on_ring: Callable[[], None]) -> None:
    """Call ``on_ring`` on the running loop each time the doorbell rings, until cancelled.

    For the web process's event loop (``app.jobs.tail``): a submit rings the doorbell, and
    nothing else tells the loop of the new job, Redis or none. A LISTEN on a connection of its
    own, read when its socket is readable, so no thread waits on it. A lost connection is
    made again ``RECONNECT_SECONDS`` later; rings meanwhile are missed, which costs latency
    only (the listener polls as well).
    """
    loop = asyncio.get_running_loop()
    url = make_url(database_url)
    while True:
        conn: Any = None
        fd: int | None = None
        try:
            conn = await loop.run_in_executor(
                None, lambda: connect(url, application_name="chorus doorbell listener")
            )
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            readable = asyncio.Event()
            fd = int(conn.fileno())
            loop.add_reader(fd, readable.set)
            while True:
                await readable.wait()
                readable.clear()
                conn.poll()
                if conn.notifies:
                    conn.notifies.clear()
                    on_ring()
        except Exception as exc:  # noqa: BLE001 - the database went away: listen again later
            log.warning("doorbell listener: lost its connection (%s); polling meanwhile", exc)
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            if conn is not None:
                with contextlib.suppress(Exception):  # already broken
                    conn.close()
        await asyncio.sleep(RECONNECT_SECONDS)

"""``Prefer: wait``: a POST held open until its job ends, without a worker and without a busy loop.

A worker that makes a job terminal publishes its id on Redis after the commit
(``TerminalNotifier``). Each web process runs one ``WaitHub`` thread: it listens on that
channel and wakes the requests waiting for the job, and every ``WAIT_RECHECK_SECONDS`` it asks
the database, in one query for all of them, which of their jobs have ended. That slow re-check
covers a lost notification, a Redis outage, and the embedded default, which has no Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import redis
from sqlalchemy import select

from app import metrics
from app.db import Database
from app.jobs.models import Job
from app.jobs.status import TERMINAL
from config import Settings
from config.settings import MAX_WAIT_SECONDS

log = logging.getLogger(__name__)

CHANNEL = "chorus:jobs:terminal"
RECONNECT_SECONDS = 5.0
RECHECK_CHUNK = 500


def channel_name(prefix: str) -> str:
    """The channel, under ``REDIS_KEY_PREFIX`` like every other key Chorus uses."""
    return f"{prefix}{CHANNEL}"


def requested_wait(headers: Mapping[str, str] | Any) -> int | None:
    """Seconds asked for by ``Prefer: wait[=N]`` (RFC 7240), capped at 60, or None.

    ``wait`` alone means 60 s. A malformed value is ignored, as RFC 7240 asks of a preference
    the server does not understand; so is ``wait=0``. Only the first ``wait`` counts.
    """
    values = headers.getlist("Prefer") if hasattr(headers, "getlist") else [headers.get("Prefer")]
    for value in values:
        for preference in (value or "").split(","):
            token, _, _params = preference.partition(";")
            name, eq, raw = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            raw = raw.strip().strip('"')
            if not eq:
                return MAX_WAIT_SECONDS
            if not raw.isascii() or not raw.isdigit():
                return None
            # Python refuses to read integers of over 4,300 digits; anything over the cap is
            # the cap, however long it is written.
            digits = raw.lstrip("0")
            if len(digits) > len(str(MAX_WAIT_SECONDS)):
                return MAX_WAIT_SECONDS
            return min(int(digits or "0"), MAX_WAIT_SECONDS) or None
    return None


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=2, socket_keepalive=True
    )


class TerminalNotifier:
    """The worker side: "these jobs are terminal", published after the commit that ends them.

    Given another ``channel`` (under the same prefix), the same publisher tells another kind
    of listener of other jobs: the live event streams' tails (``app.jobs.journal.CHANNEL``).
    """

    def __init__(self, settings: Settings, channel: str = CHANNEL) -> None:
        self.url = settings.redis_url
        self.channel = f"{settings.redis_prefix}{channel}"
        self._client: redis.Redis | None = None

    def publish(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not self.url or not ids:
            return
        try:
            if self._client is None:
                self._client = _redis(self.url)
            pipe = self._client.pipeline(transaction=False)
            for job_id in ids:
                pipe.publish(self.channel, job_id)
            pipe.execute()
        except redis.RedisError:
            # Waiting requests fall back to the database re-check: a few seconds late, no more.
            log.warning("could not publish %d terminal job(s)", len(ids), exc_info=True)


class WaitHub:
    """The web side: one listener thread per process, and the cap on requests waiting in it."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.max_waiters = settings.wait_max_waiters
        self.recheck_seconds = settings.wait_recheck_seconds
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()

    @property
    def waiting(self) -> int:
        return self._count

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """True while this request may wait; False when the process already holds the cap."""
        with self._lock:
            granted = self._count < self.max_waiters
            if granted:
                self._count += 1
        if granted:
            metrics.WAITERS.inc()
        else:
            metrics.WAITS_REFUSED.inc()
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._count -= 1
                metrics.WAITERS.dec()

    def wait(self, job_id: str, seconds: float) -> bool:
        """Block until the job is seen terminal (True) or ``seconds`` pass (False)."""
        self._ensure_running()
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(event)
        try:
            return event.wait(seconds)
        finally:
            with self._lock:
                events = self._waiting.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiting[job_id]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the listener thread

    def _ensure_running(self) -> None:
        # Started on first use, in the process that serves requests (gunicorn forks workers).
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wait-hub", daemon=True)
            self._thread.start()

    def _wake(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                for event in self._waiting.get(job_id, ()):
                    event.set()

    def _run(self) -> None:
        pubsub: Any = None
        reconnect_at = 0.0
        next_check = time.monotonic() + self.recheck_seconds
        url = self.settings.redis_url
        while not self._stop.is_set():
            now = time.monotonic()
            if pubsub is None and url and now >= reconnect_at:
                try:
                    pubsub = _redis(url).pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel_name(self.settings.redis_prefix))
                except redis.RedisError:
                    log.warning(
                        "cannot listen for finished jobs on Redis; re-checking the database"
                    )
                    pubsub, reconnect_at = None, now + RECONNECT_SECONDS
            timeout = max(0.0, min(next_check - now, 1.0))
            if pubsub is not None:
                try:
                    message = pubsub.get_message(timeout=timeout)
                    while message is not None:
                        if message.get("type") == "message":
                            data = message["data"]
                            self._wake([data.decode() if isinstance(data, bytes) else str(data)])
                        message = pubsub.get_message(timeout=0)
                except (redis.RedisError, OSError):
                    log.warning("lost the Redis channel of finished jobs; reconnecting")
                    self._close(pubsub)
                    pubsub, reconnect_at = None, time.monotonic() + RECONNECT_SECONDS
            else:
                self._stop.wait(timeout)
            if time.monotonic() >= next_check:
                self._recheck()
                next_check = time.monotonic() + self.recheck_seconds
        self._close(pubsub)

    def _recheck(self) -> None:
        with self._lock:
            ids = list(self._waiting)
        if not ids:
            return
        try:
            with self.db.session() as session:
                for start in range(0, len(ids), RECHECK_CHUNK):
                    chunk = ids[start : start + RECHECK_CHUNK]
                    ended = session.scalars(
                        select(Job.id).where(Job.id.in_(chunk), Job.status.in_(list(TERMINAL)))
                    ).all()
                    self._wake(ended)
        except Exception:  # the thread must outlive a database outage
            log.warning("re-checking waited-for jobs failed", exc_info=True)

    @staticmethod
    def _close(pubsub: Any) -> None:
        if pubsub is None:
            return
        with suppress(redis.RedisError, OSError):
            pubsub.close()

"""The scheduler: one long-running process that hands due work to the workers when it is due.

Each round it fails jobs past their deadline, wakes jobs parked for an account slot, leases
the jobs due within ``SCHEDULER_LOOKAHEAD`` and sends them as ``submit_jobs``/``poll_jobs``
messages with ETAs (``workers.tasks.dispatch``), leases due webhook deliveries and sends them
to the webhook workers, and now and then sends the maintenance tasks. Then it sleeps until
the earliest thing it knows will be due: a job's next look (or the end of a lease, should its
holder have died), a delivery's next attempt, the next maintenance, or ``SCHEDULER_MAX_SLEEP``
at most. What it cannot know, a new job or a worker's write making something due sooner, rings
the doorbell (``app.doorbell``): ``NOTIFY chorus_due`` wakes it at once.

A message only says "look at row X under lease T", so nothing here is needed for
correctness beyond the leases: a lost message costs a lease's length, a repeated one does
nothing. Still, one scheduler leads at a time. Leadership is a Postgres session advisory
lock held on a connection of its own, the same one that LISTENs: the lock goes with the
connection, so a leader killed (even ``kill -9``) or cut off loses it at once, and a standby,
trying every few seconds, takes over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.db import direct_database_url, utcnow
from app.doorbell import CHANNEL, connect
from app.ops.status import LEADER_LOCK
from app.webhooks.delivery import Dispatcher
from config import Settings
from config.logs import configure
from workers import ChorusCelery
from workers import webhooks as webhook_tasks
from workers.tasks import dispatch

log = logging.getLogger("chorus.scheduler")

LOCK_KEY = LEADER_LOCK
# A standby asks for the lock this often.
STANDBY_RETRY_SECONDS = 2.0
# Rounds are at least this far apart, however often the doorbell rings (a burst of submits).
MIN_ROUND_GAP = 0.05
# After a database error, the next round waits this long.
ERROR_BACKOFF_SECONDS = 1.0
# Expired idempotency keys are deleted this often; until then an expired key is already
# treated as new, so the interval only bounds the table's size.
IDEMPOTENCY_PURGE_SECONDS = 600.0


class LeadershipLost(Exception):
    """The connection that held the lock is gone, and the lock with it."""


class Leadership(Protocol):
    def try_acquire(self) -> bool: ...

    def fileno(self) -> int | None: ...

    def drain(self) -> bool: ...

    def release(self) -> None: ...


class PostgresLeadership:
    """``pg_try_advisory_lock`` on a dedicated connection, which also LISTENs for the doorbell."""

    def __init__(self, database_url: str) -> None:
        self._url = make_url(database_url)
        self._conn: Any = None
        # The last try failed for want of the database (not for another leader).
        self.unreachable = False

    def try_acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                # Keepalives: a leader cut off from the server notices within seconds.
                self._conn = connect(
                    self._url,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                    application_name="chorus scheduler",
                )
            self.unreachable = False
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
                if not cursor.fetchone()[0]:
                    return False
                cursor.execute(f"LISTEN {CHANNEL}")
            return True
        except Exception as exc:  # noqa: BLE001 - the database is down: stand by and retry
            self.unreachable = True
            log.warning("scheduler: cannot reach the database (%s)", exc)
            self.release()
            return False

    def fileno(self) -> int | None:
        return int(self._conn.fileno()) if self._conn is not None else None

    def drain(self) -> bool:
        """Read what the connection received; True if the doorbell rang meanwhile."""
        try:
            self._conn.poll()
        except Exception as exc:
            raise LeadershipLost(str(exc).strip() or type(exc).__name__) from exc
        rang = bool(self._conn.notifies)
        self._conn.notifies.clear()
        return rang

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()  # the lock and the LISTEN end with the session
            self._conn = None


@dataclass
class Periodic:
    """A maintenance task sent every ``interval`` seconds (first when leadership begins)."""

    task: str
    interval: float
    due: float = 0.0


class Scheduler:
    def __init__(
        self,
        app: ChorusCelery,
        leadership: Leadership | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.engine = app.engine
        self.webhooks = Dispatcher(self.settings, self.engine.db)
        # A session-level lock and a LISTEN: never through a pooler in transaction mode.
        self.leadership = leadership or PostgresLeadership(direct_database_url(self.settings))
        self.clock = clock
        self.stopping = False
        # When the database was last found unreachable and no round has run since: the next
        # round first gives the leases that lapsed meanwhile one lease more (forgive_outage).
        self.outage_since: dt.datetime | None = None
        self.periodic = [Periodic("chorus.purge_idempotency_keys", IDEMPOTENCY_PURGE_SECONDS)]
        if self.settings.retention_days > 0:  # RETENTION_DAYS=0 keeps everything
            self.periodic.append(Periodic("chorus.purge_expired", self.settings.retention_interval))
        # Signals write here, so a sleeping select() returns at once on SIGTERM or Ctrl-C.
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # ------------------------------------------------------------------ process

    def run(self) -> None:
        """Stand by until leading, lead until stopped or cut off, and again."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.set_wakeup_fd(self._wake_w)
        standing_by = False
        while not self.stopping:
            if not self.leadership.try_acquire():
                if getattr(self.leadership, "unreachable", False):
                    self.outage_since = self.outage_since or utcnow()
                if not standing_by:
                    log.info("scheduler: standing by (another scheduler leads)")
                    standing_by = True
                self._sleep(STANDBY_RETRY_SECONDS, listen=False)
                continue
            standing_by = False
            log.info("scheduler: leading")
            try:
                self.lead()
            except LeadershipLost as exc:
                self.outage_since = self.outage_since or utcnow()
                log.warning("scheduler: lost the database connection (%s); standing by", exc)
            finally:
                self.leadership.release()
        log.info("scheduler: stopped")

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def lead(self) -> None:
        now = self.clock()
        for periodic in self.periodic:
            periodic.due = now
        while not self.stopping:
            started = self.clock()
            delay = self.round()
            self._sleep(delay, listen=True)
            # A ringing doorbell (a burst of submits) must not turn rounds into a busy loop.
            rest = MIN_ROUND_GAP - (self.clock() - started)
            if rest > 0 and not self.stopping:
                self._sleep(rest, listen=False)

    def _sleep(self, seconds: float, *, listen: bool) -> None:
        """Sleep up to ``seconds``; with ``listen``, the doorbell ends the sleep early."""
        if listen and self.leadership.drain():
            return  # rang during the round
        fds = [self._wake_r]
        conn = self.leadership.fileno() if listen else None
        if conn is not None:
            fds.append(conn)
        deadline = self.clock() + max(0.0, seconds)
        while not self.stopping:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            ready, _, _ = select.select(fds, [], [], remaining)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            if conn is not None and conn in ready and self.leadership.drain():
                return

    # ------------------------------------------------------------------ one round

    def round(self) -> float:
        """Hand out what is due; returns how long to sleep before the next round."""
        try:
            return self._round()
        except SQLAlchemyError as exc:
            self.outage_since = self.outage_since or utcnow()
            log.warning("scheduler: database error (%s); retrying", type(exc).__name__)
        except Exception:  # the broker, say: what was leased is sent again once leases lapse
            log.exception("scheduler: round failed; retrying")
        return ERROR_BACKOFF_SECONDS

    def _round(self) -> float:
        settings, engine = self.settings, self.engine
        if self.outage_since is not None:
            forgiven = engine.forgive_outage(self.outage_since)
            if forgiven:
                log.info("%d lease(s) that lapsed while the database was away renewed", forgiven)
            self.outage_since = None
        expired = engine.expire_overdue()
        if expired:
            log.info("%d job(s) passed their deadline", expired)
        engine.accounts.wake_waiting()
        lookahead = settings.scheduler_lookahead
        claims = engine.claim_due(lookahead=lookahead, limit=settings.claim_batch)
        dispatch(claims)
        webhook_tasks.send(self.webhooks.claim())
        self._maintain()
        if len(claims) >= settings.claim_batch:
            return 0.0  # more are due than one round takes
        now = utcnow()
        wake = now + dt.timedelta(seconds=settings.scheduler_max_sleep)
        job_due = engine.next_due()
        if job_due is not None:
            # Claimed `lookahead` ahead and held by an ETA, so the poll lands on time; and
            # at least half a lookahead between rounds, so a stream of due jobs goes out in
            # batches, still each with half a lookahead to spare.
            ahead = job_due - dt.timedelta(seconds=lookahead)
            wake = min(wake, max(ahead, now + dt.timedelta(seconds=lookahead / 2)))
        delivery_due = self.webhooks.next_due()
        if delivery_due is not None:
            wake = min(wake, delivery_due)
        delay = (wake - now).total_seconds()
        next_periodic = min((p.due for p in self.periodic), default=None)
        if next_periodic is not None:
            delay = min(delay, next_periodic - self.clock())
        return max(0.0, delay)

    def _maintain(self) -> None:
        now = self.clock()
        for periodic in self.periodic:
            if periodic.due <= now:
                # A copy still queued when the next is due is redundant: same rows, same work.
                self.app.send_task(periodic.task, expires=periodic.interval)
                periodic.due = now + periodic.interval


def run(settings: Settings) -> None:
    from workers import make_celery
    from workers import metrics as worker_metrics

    configure(settings, "scheduler")
    # Its own /metrics where METRICS_PORT is set (a host of its own); see workers.metrics.
    worker_metrics.start(settings)
    Scheduler(make_celery(settings)).run()

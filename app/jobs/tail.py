"""The live event streams' reader: one ``EventTail`` per web process, on its event loop.

Every open stream of the process (a job's, or an org's) is a ``Subscription`` waiting on its
own queue; no stream holds a thread. The tail alone reads ``job_events``, in one query for all
of them: the rows with ``id`` above its cursor. It reads when told (the scheduler's doorbell,
which a submit rings, heard on a LISTEN of the tail's own; and a Redis message published after
each commit that wrote events, ``app.jobs.journal.CHANNEL``) and at least every
``poll_seconds``, so a lost message or a broken connection costs at most that long. Its database work runs on the loop's executor, one call at a time;
the jobs those rows concern are read and rendered in the same call (one query per wake).

Contiguity. ``bigserial`` ids are taken when a row is inserted and become visible when its
transaction commits, so they commit out of order: 41 may be seen before 40, whose transaction
is still open. Had the cursor moved to 41, event 40 would never be read. So the cursor only
moves over ids seen contiguously: a row after a gap is held back until the gap fills, or
until the gap is ``gap_seconds`` old (the time since the first row past it was seen), after
which the missing ids are given up: a rolled-back insert, or a sequence's unused cache,
leaves a gap that never fills. The ids given up are still looked up at each read for
``LATE_SECONDS``: an event that commits that late (a slow transaction) still reaches the
streams following it, out of order for an org's stream (then without its ``id:``, so a resume
starts from the newest event the client has). Later than that it is stored all the same, and a
reconnect with ``Last-Event-ID`` replays it.

It starts ``gap_seconds`` back (the newest event made before then), as if those rows had
just been seen: their gaps may still fill.

A new subscription first catches up, in the tail's next read, on its events between its own
position (what the opening request replayed) and the cursor; from then on it is given each
row the tail releases past that position, in id order, so nothing is sent twice or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import Table, or_, select

from app import doorbell
from app.catalog.models import Model
from app.db import Database, direct_database_url, utcnow
from app.jobs import journal
from app.jobs.journal import StoredEvent
from app.jobs.loop_reader import LoopReader
from app.jobs.models import Job, JobEvent
from app.jobs.present import render
from app.jobs.progress import estimate
from app.jobs.subscription import Basis, Delivery, Subscription
from app.storage import AudioStorage
from config import Settings

log = logging.getLogger(__name__)

_EVENTS = cast(Table, JobEvent.__table__)
READ_BATCH = 2000
# How long ids given up behind a gap are still looked for, and how wide a gap is to be looked
# for at all (a sequence's lost cache after a crash skips ranges no insert ever used).
LATE_SECONDS = 60.0
LATE_GAP_MAX = 1000
CATCH_UP_LIMIT = 10_000
RECONNECT_SECONDS = 5.0


@dataclass
class _Read:
    """What one executor call found."""

    caught_up: list[StoredEvent]
    rows: list[StoredEvent]
    late: list[StoredEvent]  # given-up ids that have since committed
    rendered: dict[tuple[str, str], str]
    bases: dict[str, Basis]
    jobs: dict[str, Job]


class Gaps:
    """The cursor and the rows held back behind a gap (see the module's docstring)."""

    def __init__(self, cursor: int, gap_seconds: float) -> None:
        self.cursor = cursor
        self.gap_seconds = gap_seconds
        self.held: dict[int, tuple[float, Any]] = {}  # id -> (first seen, row)
        self.missing: dict[int, float] = {}  # id given up -> when (looked for LATE_SECONDS)

    def add(self, ids_and_rows: Iterable[tuple[int, Any]], now: float) -> None:
        """Rows read past the cursor. A row read again keeps when it was first seen and takes
        the newer payload (its job rendered for the streams open now)."""
        for event_id, row in ids_and_rows:
            if event_id > self.cursor:
                first_seen = self.held[event_id][0] if event_id in self.held else now
                self.held[event_id] = (first_seen, row)

    def release(self, now: float) -> list[Any]:
        """The rows that may go out now, in id order; the cursor moved past them."""
        out: list[Any] = []
        ids = sorted(self.held)
        # A gap before ids[i] is as old as the earliest row seen past it.
        oldest_after = [0.0] * len(ids)
        earliest = math.inf
        for i in range(len(ids) - 1, -1, -1):
            earliest = min(earliest, self.held[ids[i]][0])
            oldest_after[i] = earliest
        for i, event_id in enumerate(ids):
            if event_id != self.cursor + 1 and now - oldest_after[i] < self.gap_seconds:
                break  # a gap still young: wait for it to fill
            if event_id - self.cursor - 1 <= LATE_GAP_MAX:
                self.missing.update(dict.fromkeys(range(self.cursor + 1, event_id), now))
            self.cursor = event_id
            out.append(self.held.pop(event_id)[1])
        return out

    def late_ids(self, now: float) -> list[int]:
        """The given-up ids still looked for (those missing over LATE_SECONDS are dropped)."""
        for event_id in [i for i, since in self.missing.items() if now - since > LATE_SECONDS]:
            del self.missing[event_id]
        return sorted(self.missing)


class EventTail(LoopReader):
    """The process's reader of ``job_events`` for its open streams, started with the first."""

    name = "event-tail"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        storage: AudioStorage | None,
        *,
        poll_seconds: float = 1.0,
        gap_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.db = db
        self.storage = storage
        self.poll_seconds = poll_seconds
        self.gap_seconds = gap_seconds
        self._by_job: dict[str, set[Subscription]] = {}
        self._by_org: dict[int, set[Subscription]] = {}
        self._new: list[Subscription] = []
        self._count = 0
        self._bases: Counter[str] = Counter()  # the origins of the open streams: how many each
        self.gaps: Gaps | None = None

    @property
    def streams(self) -> int:
        """Streams open in this process (the cap EVENTS_MAX_STREAMS counts these)."""
        return self._count

    def subscribe(self, sub: Subscription) -> None:
        """Follow ``sub`` (call on the loop): caught up at the next read, then live."""
        self._ensure_running()
        if sub.job_id is not None:
            self._by_job.setdefault(sub.job_id, set()).add(sub)
        else:
            self._by_org.setdefault(cast(int, sub.org_id), set()).add(sub)
        self._count += 1
        self._bases[sub.base_url] += 1
        self._new.append(sub)
        self._wake.set()

    def unsubscribe(self, sub: Subscription) -> None:
        index: dict[Any, set[Subscription]]
        key: Any
        index, key = (
            (self._by_job, sub.job_id) if sub.job_id is not None else (self._by_org, sub.org_id)
        )
        subs = index.get(key)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            self._bases[sub.base_url] -= 1
            if not self._bases[sub.base_url]:
                del self._bases[sub.base_url]
            if not subs:
                del index[key]

    # ------------------------------------------------------------------ the loop's task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Submits ring the scheduler's doorbell and nothing else; status changes are also
        # published on Redis, where there is one.
        listeners = [loop.create_task(doorbell.hear(direct_database_url(self.settings), self.wake))]
        if self.settings.redis_url:
            listeners.append(loop.create_task(self._listen()))
        try:
            gaps: Gaps | None = None
            while gaps is None:
                try:
                    gaps = Gaps(await loop.run_in_executor(None, self._last_id), self.gap_seconds)
                except Exception:
                    log.warning("event tail: cannot read the newest event", exc_info=True)
                    await asyncio.sleep(self.poll_seconds)
            self.gaps = gaps
            while True:
                try:
                    await self._one_round(loop, gaps)
                except Exception:  # the tail must outlive any one bad round
                    log.exception("event tail: a round failed")
                    await asyncio.sleep(self.poll_seconds)
        finally:
            for listener in listeners:
                listener.cancel()

    async def _one_round(self, loop: asyncio.AbstractEventLoop, gaps: Gaps) -> None:
        # While rows are held behind a gap, look again soon after it could be given up.
        timeout = self.poll_seconds if not gaps.held else min(self.poll_seconds, 0.25)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
        newcomers, self._new = self._new, []
        newcomers = [s for s in newcomers if self._subscribed(s)]
        watched_jobs, watched_orgs = set(self._by_job), set(self._by_org)
        bases = set(self._bases)
        cursor = gaps.cursor
        late = gaps.late_ids(time.monotonic())
        try:
            read = await loop.run_in_executor(
                None, self._read, cursor, late, newcomers, watched_jobs, watched_orgs, bases
            )
        except Exception:
            log.warning("event tail: reading new events failed", exc_info=True)
            self._new[:0] = newcomers  # they catch up at the next read
            await asyncio.sleep(self.poll_seconds)
            return
        self._apply(read, newcomers, cursor, gaps)
        if len(read.rows) == READ_BATCH:
            self._wake.set()  # more are waiting: read on at once

    def _subscribed(self, sub: Subscription) -> bool:
        if sub.job_id is not None:
            return sub in self._by_job.get(sub.job_id, ())
        return sub in self._by_org.get(cast(int, sub.org_id), ())

    def _apply(self, read: _Read, newcomers: list[Subscription], cursor: int, gaps: Gaps) -> None:
        # One Delivery (its bytes framed once) per event and origin, however many streams
        # follow it: a row that reaches thousands of org streams is rendered and framed once.
        shared: dict[tuple[int, str], Delivery] = {}

        def delivery(row: StoredEvent, base_url: str, row_read: _Read) -> Delivery:
            made = shared.get((row.id, base_url))
            if made is None:
                made = shared[(row.id, base_url)] = self._delivery(row, base_url, row_read)
            return made

        for sub in newcomers:
            if not self._subscribed(sub):
                continue  # left while its catch-up was read
            basis = read.bases.get(sub.job_id) if sub.job_id is not None else None
            catch_up = [Delivery(None, None, "", basis)] if basis is not None else []
            catch_up.extend(
                delivery(row, sub.base_url, read)
                for row in read.caught_up
                if row.id <= cursor and (row.job_id == sub.job_id or row.org_id == sub.org_id)
            )
            sub.offer_all(catch_up)
            sub.ready = True
        for row in read.late:
            del gaps.missing[row.id]
            for sub in (*self._by_job.get(row.job_id, ()), *self._by_org.get(row.org_id, ())):
                # A newcomer's catch-up, read in the same call, already had it.
                if sub.ready and sub not in newcomers:
                    sub.offer_late(delivery(row, sub.base_url, read))
        gaps.add(((row.id, (row, read)) for row in read.rows), time.monotonic())
        # Each stream is offered all it gets of what is released at once: one write for them.
        followed: dict[tuple[str, Any], list[tuple[StoredEvent, _Read]]] = {}
        for row, row_read in gaps.release(time.monotonic()):
            if row.job_id in self._by_job:
                followed.setdefault(("job", row.job_id), []).append((row, row_read))
            if row.org_id in self._by_org:
                followed.setdefault(("org", row.org_id), []).append((row, row_read))
        for (kind, key), rows in followed.items():
            subs = self._by_job.get(key, ()) if kind == "job" else self._by_org.get(key, ())
            for_origin: dict[str, list[Delivery]] = {}
            for sub in tuple(subs):
                if not sub.ready:
                    continue
                deliveries = for_origin.get(sub.base_url)
                if deliveries is None:
                    deliveries = for_origin[sub.base_url] = [
                        delivery(row, sub.base_url, row_read) for row, row_read in rows
                    ]
                sub.offer_all(deliveries)

    def _delivery(self, row: StoredEvent, base_url: str, read: _Read) -> Delivery:
        data = read.rendered.get((row.job_id, base_url))
        if data is None:
            # A stream opened from another origin after the row was read: rendered here,
            # with its audio as the link (reading a hex file belongs off the loop).
            job = read.jobs.get(row.job_id)
            data = json.dumps(render(job, self.settings, base_url) if job else None)
        return Delivery(row.id, row.type, data, read.bases.get(row.job_id))

    # ------------------------------------------------------------------ executor work

    def _last_id(self) -> int:
        """Where the tail starts: before the last ``gap_seconds`` of events, whose ids may
        still have gaps that fill; those are read again, and go to no stream twice."""
        since = utcnow() - dt.timedelta(seconds=self.gap_seconds)
        with self.db.session() as session:
            return journal.last_id(session, before=since)

    def _read(
        self,
        cursor: int,
        late: list[int],
        newcomers: list[Subscription],
        watched_jobs: set[str],
        watched_orgs: set[int],
        bases: set[str],
    ) -> _Read:
        with self.db.session() as session:
            caught_up: list[StoredEvent] = []
            if newcomers:
                jobs = [s.job_id for s in newcomers if s.job_id is not None]
                orgs = [s.org_id for s in newcomers if s.org_id is not None]
                lowest = min(s.after for s in newcomers)
                if lowest < cursor:
                    caught_up = [
                        StoredEvent(*row)
                        for row in session.execute(
                            select(_EVENTS)
                            .where(
                                or_(_EVENTS.c.job_id.in_(jobs), _EVENTS.c.org_id.in_(orgs)),
                                _EVENTS.c.id > lowest,
                                _EVENTS.c.id <= cursor,
                            )
                            .order_by(_EVENTS.c.id)
                            .limit(CATCH_UP_LIMIT)
                        )
                    ]
            rows = [
                StoredEvent(*row)
                for row in session.execute(
                    select(_EVENTS)
                    .where(_EVENTS.c.id > cursor)
                    .order_by(_EVENTS.c.id)
                    .limit(READ_BATCH)
                )
            ]
            found_late = (
                [
                    StoredEvent(*row)
                    for row in session.execute(
                        select(_EVENTS).where(_EVENTS.c.id.in_(late)).order_by(_EVENTS.c.id)
                    )
                ]
                if late
                else []
            )
            concerned = {e.job_id for e in caught_up}
            concerned.update(
                r.job_id for r in found_late if r.job_id in watched_jobs or r.org_id in watched_orgs
            )
            concerned.update(s.job_id for s in newcomers if s.job_id is not None)
            concerned.update(
                r.job_id for r in rows if r.job_id in watched_jobs or r.org_id in watched_orgs
            )
            rendered: dict[tuple[str, str], str] = {}
            found: dict[str, Basis] = {}
            jobs_found: dict[str, Job] = {}
            if concerned:
                for job, expected in session.execute(
                    select(Job, Model.expected_seconds)
                    .join(Model, Model.id == Job.model_id)
                    .where(Job.id.in_(sorted(concerned)))
                ):
                    found[job.id] = Basis(job.status, job.started_at, expected)
                    jobs_found[job.id] = job
                    # A running job's progress and eta, as its GET shows them.
                    guess = estimate(job.status, job.started_at, expected, utcnow())
                    for base in bases:
                        body = render(job, self.settings, base, self.storage, progress=guess)
                        rendered[(job.id, base)] = json.dumps(body)
        return _Read(caught_up, rows, found_late, rendered, found, jobs_found)

    # ------------------------------------------------------------------ the wake-up channel

    async def _listen(self) -> None:
        """Wake the tail on each message of the events channel; reconnect when it drops."""
        channel = f"{self.settings.redis_prefix}{journal.CHANNEL}"
        while True:
            client = aioredis.Redis.from_url(
                cast(str, self.settings.redis_url), socket_connect_timeout=2
            )
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.wake()
            except (RedisError, OSError):
                log.warning("event tail: lost the Redis channel; polling meanwhile")
            finally:
                await client.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

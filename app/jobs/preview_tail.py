"""The early-audio listeners' reader: one ``PreviewTail`` per web process, on its event loop.

Every listener of the process (``app.listeners``) is a ``Listener`` waiting on its own queue;
none holds a thread. The tail alone reads ``audio_previews`` (``app.jobs.previews``): each
round, ONE query for every followed job at once, which returns each job's status and its
pieces after the lowest position its listeners still want. Rounds come every ``RECHECK``
seconds while anyone listens (nothing tells the web that a piece was stored), at once for a
new listener, and at once again while pieces are left to read. The query runs on the loop's
executor, one call at a time.

A job's status and its pieces are read in one statement, so they agree: a job's end deletes
its pieces in the transaction that ends it, and once the tail reads a job as ended it tells
its listeners so (``Ended``), after the last pieces it had. The one that SUCCEEDED has its
durable copy by then: each listener sends the rest from there, from the byte it reached.

A listener's queue holds at most about ``QUEUE_BYTES``. One whose client reads slower than
the song is made stops being handed pieces when full, and asks for more once it has sent half
(it then counts in the next read's lowest position). So no listener makes the process hold
a whole song, and a slow one still hears it all: what it missed is read again, or, once the
job ended, is in the durable copy. A read that fails (the database is down) is tried again
a round later; the listeners wait meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, column, select, true, values

from app.db import Database
from app.jobs.loop_reader import LoopReader
from app.jobs.models import Job
from app.jobs.previews import AudioPreview
from app.jobs.status import ACTIVE, JobStatus

log = logging.getLogger(__name__)

RECHECK = 0.5
# One round reads at most this many pieces of each job (at most FLUSH_BYTES and a little
# more each); a job with more left is read again at once.
PIECES_PER_READ = 16
QUEUE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Ended:
    """The job ended: ``audio_key`` is its durable copy, if it succeeded with one."""

    audio_key: str | None


@dataclass(eq=False)
class Listener:
    """One listener of ``job_id``: ``after`` is the last piece handed to it, ``sent`` the bytes
    of the song handed to it so far (what Flask sent included)."""

    job_id: str
    after: int
    sent: int
    queued: int = 0  # bytes in the queue
    full: bool = False  # handed nothing more until it has sent half its queue
    ended: bool = False
    queue: asyncio.Queue[bytes | Ended] = field(default_factory=asyncio.Queue)

    def offer(self, seq: int, data: bytes) -> bool:
        """Take the piece ``seq`` if it is the listener's next and there is room."""
        if seq <= self.after or self.ended:
            return True  # had it already
        if self.full or self.queued >= QUEUE_BYTES:
            self.full = True
            return False
        self.queue.put_nowait(data)
        self.after, self.sent, self.queued = seq, self.sent + len(data), self.queued + len(data)
        return True

    def end(self, ended: Ended) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(ended)

    @property
    def wants(self) -> bool:
        return not self.full and not self.ended


class PreviewTail(LoopReader):
    """The process's reader of ``audio_previews`` for its listeners, started with the first."""

    name = "preview-tail"

    def __init__(self, db: Database, *, recheck: float = RECHECK) -> None:
        super().__init__()
        self.db = db
        self.recheck = recheck
        self._by_job: dict[str, set[Listener]] = {}
        self._count = 0

    @property
    def listeners(self) -> int:
        """Listeners open in this process (the cap PREVIEW_MAX_LISTENERS counts these)."""
        return self._count

    def listen(self, listener: Listener) -> None:
        """Follow ``listener`` (call on the loop): its next pieces come at the next read."""
        self._ensure_running()
        self._by_job.setdefault(listener.job_id, set()).add(listener)
        self._count += 1
        self._wake.set()

    def leave(self, listener: Listener) -> None:
        listeners = self._by_job.get(listener.job_id)
        if listeners is not None and listener in listeners:
            listeners.discard(listener)
            self._count -= 1
            if not listeners:
                del self._by_job[listener.job_id]

    async def take(self, listener: Listener) -> bytes | Ended:
        """The listener's next piece (or its job's end), asking for more when half empty."""
        item = await listener.queue.get()
        if isinstance(item, bytes):
            listener.queued -= len(item)
            if listener.full and listener.queued <= QUEUE_BYTES // 2:
                listener.full = False
                self._wake.set()
        return item

    # ------------------------------------------------------------------ the loop's task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._by_job:
                await self._wake.wait()  # nobody listens: no reads
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recheck)
            self._wake.clear()
            wanted = self._wanted()
            if not wanted:
                continue
            try:
                rows = await loop.run_in_executor(None, self._read, wanted)
                if self._hand_out(wanted, rows):
                    self._wake.set()  # pieces are left to read: read on at once
            except Exception:  # the tail must outlive any one bad round
                log.warning("preview tail: a round failed", exc_info=True)
                await asyncio.sleep(self.recheck)

    def _wanted(self) -> dict[str, int]:
        """Each job some listener wants more of, and the lowest piece it has."""
        wanted: dict[str, int] = {}
        for job_id, listeners in self._by_job.items():
            afters = [listener.after for listener in listeners if listener.wants]
            if afters:
                wanted[job_id] = min(afters)
        return wanted

    def _hand_out(self, wanted: dict[str, int], rows: Iterable[Any]) -> bool:
        """Give each listener its pieces, then tell those of ended jobs; True when a job had
        as many pieces as one read takes (more may be waiting)."""
        pieces: dict[str, list[tuple[int, bytes]]] = {}
        status: dict[str, tuple[str | None, str | None]] = {}
        for job_id, job_status, audio_key, seq, data in rows:
            status[job_id] = (job_status, audio_key)
            if seq is not None:
                pieces.setdefault(job_id, []).append((seq, bytes(data)))
        more = False
        for job_id in wanted:
            listeners = self._by_job.get(job_id, set())
            got = pieces.get(job_id, [])
            more = more or len(got) == PIECES_PER_READ
            for listener in listeners:
                for seq, data in got:
                    if not listener.offer(seq, data):
                        break
            job_status, audio_key = status.get(job_id, (None, None))
            if job_status not in ACTIVE:
                # Gone or ended: what the listener lacks is in the durable copy, if anywhere.
                key = audio_key if job_status == JobStatus.SUCCEEDED else None
                for listener in listeners:
                    listener.end(Ended(key))
        return more

    # ------------------------------------------------------------------ executor work

    def _read(self, wanted: dict[str, int]) -> list[Any]:
        """Each wanted job's status and audio key, with its next pieces (one row per piece,
        or one row with no piece)."""
        columns = (column("job_id", String), column("after", Integer))
        positions = values(*columns, name="wanted").data(sorted(wanted.items()))
        piece = (
            select(AudioPreview.seq, AudioPreview.bytes)
            .where(AudioPreview.job_id == positions.c.job_id, AudioPreview.seq > positions.c.after)
            .order_by(AudioPreview.seq)
            .limit(PIECES_PER_READ)
            .lateral("piece")
        )
        query = (
            select(positions.c.job_id, Job.status, Job.audio_key, piece.c.seq, piece.c.bytes)
            .select_from(positions)
            .outerjoin(Job, Job.id == positions.c.job_id)
            .outerjoin(piece, true())
            .order_by(positions.c.job_id, piece.c.seq)
        )
        with self.db.session() as session:
            return list(session.execute(query).all())

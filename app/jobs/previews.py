"""Early audio: the pieces of a streamed song, kept while the song is being made.

A synchronous upstream that streams (MiniMax with ``stream: true``) hands its audio over in
pieces. The worker holding the call stores them in ``audio_previews`` (Postgres, so every web
process of every shape can read them), coalesced to at most one INSERT per ``FLUSH_BYTES`` or
``FLUSH_SECONDS``. The web serves them to listeners (``GET /v1/files/preview/{token}``) as
they arrive.

The rows live only while the job is active. Each INSERT takes the job's row ``FOR SHARE`` and
inserts only if the job is still QUEUED or RUNNING; every change to a terminal state deletes
the job's rows in its own transaction (``drop_previews``, a hook of the status writer). The two
cannot interleave: the status UPDATE waits for a pending INSERT to commit and its DELETE then
sees the row, or the INSERT waits for the UPDATE and then finds the job ended. Retention sweeps
whatever a crash could still leave (``purge_previews``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

from sqlalchemy import (
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base, Database, UTCDateTime, utcnow
from app.jobs.models import Job
from app.jobs.status import ACTIVE, TERMINAL
from app.jobs.transitions import Change

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 1.0
# One read of a listener takes at most this much (it reads again for the rest).
READ_BYTES = 4 * 1024 * 1024


class AudioPreview(Base):
    __tablename__ = "audio_previews"

    job_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    bytes: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


_ACTIVE = sorted(str(status) for status in ACTIVE)
# One piece, stored only while its job is active (see the module's docstring).
_INSERT = insert(cast(Table, AudioPreview.__table__)).from_select(
    ["job_id", "seq", "bytes", "created_at"],
    select(
        bindparam("job_id", type_=String(40)),
        bindparam("seq", type_=Integer),
        bindparam("data", type_=LargeBinary),
        bindparam("now", type_=UTCDateTime()),
    )
    .select_from(Job)
    .where(Job.id == bindparam("job_id"), Job.status.in_(_ACTIVE))
    .with_for_update(read=True),
)


def sniff_format(head: bytes, asked: str | None = None) -> str:
    """The audio format of a file starting with ``head``, else the one asked for, else mp3
    (MiniMax's default)."""
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return asked if asked in ("mp3", "wav", "flac") else "mp3"


class PreviewWriter:
    """Collects one job's pieces and stores them in order.

    ``begin`` is called once, with the first batch's bytes, before anything is stored: the
    submitter moves the job to RUNNING there. It returns False when the job is no longer ours
    (cancelled), and nothing is stored after that.
    """

    def __init__(
        self,
        db: Database,
        job_id: str,
        begin: Callable[[bytes], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.begin = begin
        self.clock = clock
        self.buffer = bytearray()
        self.seq = 0
        self.flushed_at = clock()
        self.open = True
        self.begun = False

    def add(self, piece: bytes) -> None:
        """Take one piece; stored at once if enough has gathered, or enough time passed."""
        if not self.open or not piece:
            return
        self.buffer += piece
        # The first piece at once (the listener waits for it), then in batches.
        due = self.clock() - self.flushed_at >= FLUSH_SECONDS
        if not self.begun or len(self.buffer) >= FLUSH_BYTES or due:
            self.flush()

    def flush(self) -> None:
        if not self.open or not self.buffer:
            return
        data = bytes(self.buffer)
        if not self.begun:
            self.begun = True
            if not self.begin(data):
                self.open = False
                return
        self.buffer.clear()
        self.flushed_at = self.clock()
        try:
            with self.db.transaction() as session:
                stored = session.execute(
                    _INSERT,
                    {"job_id": self.job_id, "seq": self.seq, "data": data, "now": utcnow()},
                ).rowcount  # type: ignore[attr-defined]
        except SQLAlchemyError:
            # The song matters more than its preview: listeners get the rest from the
            # durable copy once the job ends.
            log.warning("job %s: storing a preview piece failed; preview stopped", self.job_id)
            self.open = False
            return
        if stored != 1:
            self.open = False  # the job ended meanwhile: its preview is over
            return
        self.seq += 1


def read_pieces(
    db: Database, job_id: str, after: int, max_bytes: int = READ_BYTES
) -> list[tuple[int, bytes]]:
    """The job's pieces after sequence number ``after`` (-1: all), in order, up to about
    ``max_bytes`` (at least one piece)."""
    with db.session() as session:
        rows = session.execute(
            select(AudioPreview.seq, AudioPreview.bytes)
            .where(AudioPreview.job_id == job_id, AudioPreview.seq > after)
            .order_by(AudioPreview.seq)
            .limit(64)
        ).all()
    out: list[tuple[int, bytes]] = []
    total = 0
    for seq, data in rows:
        if out and total + len(data) > max_bytes:
            break
        out.append((seq, bytes(data)))
        total += len(data)
    return out


def drop_previews(session: Session, changes: Sequence[Change]) -> None:
    """Status-writer hook: a job that ended has no preview any more (its durable copy, if it
    succeeded, is stored by then)."""
    ended = [c.job.id for c in changes if c.status in TERMINAL and c.job.preview_format is not None]
    if ended:
        session.execute(delete(AudioPreview).where(AudioPreview.job_id.in_(ended)))


def purge_previews(db: Database) -> int:
    """Delete the pieces of every job that has ended (a crash between a job's end and its
    hook cannot leave any, but a manual status fix could); returns how many rows went."""
    with db.transaction() as session:
        result = session.execute(
            delete(AudioPreview).where(
                AudioPreview.job_id.in_(
                    select(Job.id).where(
                        Job.id == AudioPreview.job_id, Job.status.in_(sorted(TERMINAL))
                    )
                )
            )
        )
        count = int(result.rowcount)  # type: ignore[attr-defined]
    if count:
        log.info("previews: deleted %d piece(s) of ended jobs", count)
    return count

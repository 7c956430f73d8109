"""Each job's stored events (``job_events``): what a live event stream replays and follows.

An event is written in the transaction that makes it, so it exists if and only if its change
was committed: the submit's own statement writes ``queued`` (``app.jobs.intake``), and the
status writer's ``on_change`` hook one row per change (``record_changes``). The rows hold
no job object; a stream renders the job as it is when the event goes out.

Webhooks announce no ``queued`` (the client made the job and has its answer), so that name
belongs to the streams alone, here; the others are the lifecycle's (``app.jobs.events``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CTE, Insert, Select, Table, delete, insert, literal_column, select
from sqlalchemy.orm import Session

from app.jobs.events import EVENT_PREFIX, EVENTS
from app.jobs.models import JobEvent
from app.jobs.status import JobStatus
from app.jobs.transitions import Change

QUEUED = EVENT_PREFIX + "queued"
STREAM_EVENTS: dict[JobStatus, str] = {JobStatus.QUEUED: QUEUED, **EVENTS}
TERMINAL_EVENTS = frozenset(EVENTS[s] for s in EVENTS if s.terminal)
PROGRESS = "progress"
# Redis channel (under REDIS_KEY_PREFIX) told after a commit that wrote events: the web
# processes' tails read the table at once instead of at their next poll.
CHANNEL = "chorus:jobs:events"
# Events replayed by one opening: the rest follow (a stream) or come with the next reconnect.
REPLAY_LIMIT = 1000

_EVENTS = cast(Table, JobEvent.__table__)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    job_id: str
    org_id: int
    type: str
    created_at: dt.datetime


def record_changes(session: Session, changes: Sequence[Change]) -> None:
    """The status writer's hook: the changes' events, in one INSERT of the change's own
    transaction (a batch of changes is one statement, not one per job)."""
    rows = [
        {
            "job_id": c.job.id,
            "org_id": c.job.org_id,
            "type": STREAM_EVENTS[c.status],
            "created_at": c.at,
        }
        for c in changes
    ]
    if rows:
        session.execute(insert(JobEvent).values(rows))


def queued_row(job_id: str, org_id: int, at: dt.datetime) -> Insert:
    """The ``queued`` event of a job inserted in the caller's transaction."""
    return insert(JobEvent).values(job_id=job_id, org_id=org_id, type=QUEUED, created_at=at)


def with_queued_event(job_insert: Insert) -> Select[Any]:
    """``job_insert`` (an INSERT into jobs … RETURNING its columns) as one statement that also
    writes each inserted job's ``queued`` event: run alone in autocommit, the job and its event
    commit together. Its rows are the job's columns, as ``job_insert`` returns them."""
    job: CTE = job_insert.cte("job")
    event = (
        insert(JobEvent)
        .from_select(
            ["job_id", "org_id", "type", "created_at"],
            select(job.c.id, job.c.org_id, literal_column(f"'{QUEUED}'"), job.c.created_at),
        )
        .cte("queued_event")
    )
    return select(*job.c).add_cte(event)


def replay(
    session: Session, *, after: int, job_id: str | None = None, org_id: int | None = None
) -> list[StoredEvent]:
    """The stored events of a job (or of an org) after ``after``, oldest first."""
    where = _EVENTS.c.job_id == job_id if job_id is not None else _EVENTS.c.org_id == org_id
    rows = session.execute(
        select(_EVENTS)
        .where(where, _EVENTS.c.id > after)
        .order_by(_EVENTS.c.id)
        .limit(REPLAY_LIMIT)
    ).all()
    return [StoredEvent(*row) for row in rows]


def last_id(session: Session, *, before: dt.datetime | None = None) -> int:
    """The newest event's id (0 for none): where a stream with nothing to replay starts.
    ``before``: the newest of those made before then (read back from the newest, by id)."""
    query = select(_EVENTS.c.id).order_by(_EVENTS.c.id.desc()).limit(1)
    if before is not None:
        query = query.where(_EVENTS.c.created_at < before)
    return int(session.scalar(query) or 0)


def forget(session: Session, job_ids: Iterable[str]) -> None:
    """Delete the events of jobs retention purged (their streams have nothing left to say)."""
    ids = list(job_ids)
    if ids:
        session.execute(
            delete(JobEvent)
            .where(JobEvent.job_id.in_(ids))
            .execution_options(synchronize_session=False)
        )


def frame(event: str, data: str, event_id: int | None = None) -> bytes:
    """One Server-Sent Event; ``data`` is one line of JSON (it never holds a newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


KEEP_ALIVE = b": keep-alive\n\n"

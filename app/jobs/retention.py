"""Retention: finished jobs older than RETENTION_DAYS lose their audio and request content.

A purged job stays as a tombstone row: its id, org, model, status, price, timings and audio
facts (duration, size) are kept, so usage reports and the money history still add up and the
ledger's ``job_id`` still names a row. What goes: the stored audio file, the prompt, lyrics,
reference URL and audio settings (``request``), the callback URL and the client's metadata,
and the job's stored events (``job_events``: what a live stream would replay).

Each batch works like the engine's sweeps: it leases rows with ``FOR UPDATE SKIP LOCKED`` in a
short transaction, deletes their files with no transaction open, then marks them purged under
the same lease. Two purgers running at once take disjoint rows; one that dies mid-batch leaves
leases that lapse, and the next run deletes again (deleting a missing file is a no-op) and
marks the rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time

from sqlalchemy import or_, select, update

from app.db import Database, utcnow
from app.jobs import journal
from app.jobs.models import Job
from app.jobs.status import TERMINAL
from app.storage import AudioStorage

log = logging.getLogger(__name__)

# Long enough for one batch of deletes through the storage's timeouts and retries.
PURGE_LEASE = dt.timedelta(minutes=10)


def purge_expired(
    db: Database,
    storage: AudioStorage,
    *,
    days: float,
    batch: int,
    time_budget: float = 60.0,
    now: dt.datetime | None = None,
) -> int:
    """Purge terminal jobs created more than ``days`` ago, ``batch`` rows at a time.

    Stops when nothing is left or after ``time_budget`` seconds (the next run continues).
    Returns how many jobs it purged. ``days`` of 0 keeps everything.
    """
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - dt.timedelta(days=days)
    started = time.monotonic()
    purged = 0
    while True:
        done = _purge_batch(db, storage, cutoff, batch)
        purged += done
        if done < batch or time.monotonic() - started > time_budget:
            return purged


def _purge_batch(db: Database, storage: AudioStorage, cutoff: dt.datetime, batch: int) -> int:
    token = secrets.token_hex(16)
    now = utcnow()
    with db.transaction() as session:
        rows = session.execute(
            select(Job.id, Job.audio_key)
            .where(
                Job.purged_at.is_(None),
                Job.created_at < cutoff,
                Job.status.in_(list(TERMINAL)),
                or_(Job.lease_until.is_(None), Job.lease_until < now),
            )
            .order_by(Job.created_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [job_id for job_id, _ in rows]
        if ids:
            session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(lease_token=token, lease_until=now + PURGE_LEASE)
                .execution_options(synchronize_session=False)
            )
    if not ids:
        return 0
    keys = [key for _, key in rows if key]
    # Files first: a row marked purged must never point at a file still kept.
    storage.delete_many(keys)
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.lease_token == token)
            .values(
                purged_at=utcnow(),
                request={},
                callback_url=None,
                client_metadata=None,
                audio_key=None,
                lease_token=None,
                lease_until=None,
                updated_at=utcnow(),
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        purged = list(result.scalars())
        # The job's stored events go with its content: nothing is left for a stream to say.
        journal.forget(session, purged)
        marked = len(purged)
    log.info("retention: purged %d job(s) and %d audio file(s)", marked, len(keys))
    return marked

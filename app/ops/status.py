"""The state of a deployment in one read: what ``chorus status`` prints.

Only what the database knows is read here; the command adds what the broker and the
processes answer themselves (queue depths, workers alive).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.leasing import SWEPT
from app.jobs.models import Job
from app.ops.accounts import list_accounts
from app.webhooks.models import WebhookDelivery

RECENT = dt.timedelta(hours=1)
# The scheduler's advisory lock: whoever holds it leads. Any constant, unlikely to clash with
# another application's.
LEADER_LOCK = 0x43686F727573  # "Chorus"


def snapshot(session: Session, leader_lock: int, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    by_status = dict(
        session.execute(
            select(Job.status, func.count())
            .where(Job.created_at >= now - RECENT)
            .group_by(Job.status)
        ).all()
    )
    due, oldest = session.execute(
        select(func.count(), func.min(Job.next_action_at)).where(
            Job.status.in_(SWEPT),
            Job.next_action_at <= now,
            or_(Job.lease_until.is_(None), Job.lease_until < now),
        )
    ).one()
    webhooks = dict(
        session.execute(
            select(WebhookDelivery.status, func.count())
            .where(WebhookDelivery.status.in_(["pending", "dead"]))
            .group_by(WebhookDelivery.status)
        ).all()
    )
    overdue = session.scalar(
        select(func.count()).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now
        )
    )
    return {
        "jobs_last_hour": {status: int(n) for status, n in sorted(by_status.items())},
        "due_backlog": {
            "jobs": int(due),
            "oldest_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
        },
        "webhooks": {
            "pending": int(webhooks.get("pending", 0)),
            "overdue": int(overdue or 0),
            "dead": int(webhooks.get("dead", 0)),
        },
        "accounts": [view.as_dict() for view in list_accounts(session, now)],
        "scheduler_leading": leader_pid(session, leader_lock) is not None,
    }


def leader_pid(session: Session, lock: int) -> int | None:
    """The database session holding the scheduler's advisory lock, if one does: Postgres
    shows a bigint key as its high and low halves, and advisory locks are per database."""
    return session.scalar(
        text(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
            " AND l.classid = :high AND l.objid = :low AND l.objsubid = 1"
        ),
        {"high": lock >> 32, "low": lock & 0xFFFFFFFF},
    )

"""The delivery outbox: rows written with the status change, claimed by the scheduler.

``enqueue_for`` is called inside the transaction that moves a job to RUNNING or to a terminal
state, so a delivery exists if and only if the change was committed: a rolled-back write
leaves no event behind, and a committed one always has its event. The retry schedule lives in
the rows (``next_attempt_at``), not in Celery countdowns, so a retry 24 hours away is a row
like any other and survives restarts of everything.
The event names belong to the lifecycle (``app.jobs.events``).
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.events import event_for
from app.jobs.status import JobStatus
from app.jobs.transitions import Change
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, new_delivery_id
from config import Settings

PENDING, DELIVERED, DEAD, DISABLED = "pending", "delivered", "dead", "disabled"
DELIVERY_STATUSES = (PENDING, DELIVERED, DEAD, DISABLED)


class JobLike(Protocol):
    """What enqueueing needs of a job: the ORM row or anything shaped like it."""

    id: str
    org_id: int
    callback_url: str | None
    request: dict[str, Any]


def enqueue_for(
    session: Session, job: JobLike, status: JobStatus | str, now: dt.datetime | None = None
) -> int:
    """Write the delivery row(s) for ``job`` entering ``status``, in the caller's transaction.

    Call it from every write that moves a job to RUNNING, SUCCEEDED, FAILED or CANCELLED, after
    the conditional UPDATE changed the row (and only then). The target is the job's own
    ``callback_url`` or, failing that, the org's default endpoint; each has its event filter.
    Returns how many rows it wrote (0 or 1).
    """
    event = event_for(status)
    if event is None:
        return 0
    now = now or utcnow()
    wanted = (job.request or {}).get("webhook_events")
    if wanted and event not in wanted:
        return 0  # the job's own filter, whichever the target
    values: dict[str, Any]
    if job.callback_url:
        values = {"url": job.callback_url, "endpoint_id": None, "status": PENDING}
    else:
        endpoint = session.execute(
            select(
                WebhookEndpoint.id,
                WebhookEndpoint.url,
                WebhookEndpoint.events,
                WebhookEndpoint.disabled_at,
            ).where(WebhookEndpoint.org_id == job.org_id)
        ).first()
        if endpoint is None or (endpoint.events and event not in endpoint.events):
            return 0
        # A disabled endpoint's events are still written, so the log shows what was missed
        # and a redeliver can send them once the endpoint works again.
        values = {
            "url": endpoint.url,
            "endpoint_id": endpoint.id,
            "status": DISABLED if endpoint.disabled_at else PENDING,
        }
    session.execute(
        insert(WebhookDelivery).values(
            id=new_delivery_id(),
            org_id=job.org_id,
            job_id=job.id,
            event_type=event,
            event_at=now,
            attempt_count=0,
            manual=False,
            next_attempt_at=now if values["status"] == PENDING else None,
            created_at=now,
            updated_at=now,
            **values,
        )
    )
    return 1


def write_outbox(session: Session, changes: Sequence[Change]) -> None:
    """The status writer's hook (``Transitions.on_change``): each change's event, written in
    the change's own transaction."""
    for change in changes:
        enqueue_for(session, change.job, change.status, change.at)


def redeliver(delivery: WebhookDelivery) -> None:
    """Make ``delivery`` due now, with the same ``webhook-id`` (the API's and the CLI's).

    A delivery still being retried is simply tried now; a finished one gets one attempt of
    its own (``manual``), after which it settles again without starting the schedule over.
    """
    if delivery.status != PENDING:
        delivery.manual = True
        delivery.status = PENDING
    delivery.next_attempt_at = utcnow()


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    token: str


def remove_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete ``endpoint``; the deliveries still waiting for it are given up, not sent."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == PENDING)
        .values(status=DISABLED, next_attempt_at=None, last_error="endpoint removed")
        .execution_options(synchronize_session=False)
    )
    session.delete(endpoint)


def new_token() -> str:
    return secrets.token_hex(16)


def claim_due(
    session: Session, *, limit: int, max_in_flight: int, lease: dt.timedelta
) -> list[Claim]:
    """Lease due pending deliveries, keeping at most ``max_in_flight`` leased at once.

    The cap keeps a backlog (a receiver outage ending, a burst of jobs) from piling up in the
    workers' queues faster than their threads can send.
    """
    now = utcnow()
    leased = int(
        session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.lease_until > now)
        )
        or 0
    )
    room = min(limit, max_in_flight - leased)
    if room <= 0:
        return []
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(room)
        .with_for_update(skip_locked=True)
    ).all()
    claims = []
    for delivery_id in ids:
        token = new_token()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(lease_token=token, lease_until=now + lease)
            .execution_options(synchronize_session=False)
        )
        claims.append(Claim(delivery_id, token))
    return claims


def next_due(session: Session, now: dt.datetime) -> dt.datetime | None:
    """When the next free pending delivery is due, later than ``now``.

    Only the index's order, never a scan of a backlog: deliveries due now that were not
    claimed wait for room under the in-flight cap, which the attempts ringing the doorbell
    make; a leased one whose worker died is found within the scheduler's safety cap.
    """
    found: dt.datetime | None = session.scalar(
        select(WebhookDelivery.next_attempt_at)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at > now,
            WebhookDelivery.lease_until.is_(None),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
    )
    return found


def retry_delay(
    settings: Settings, attempts: int, retry_after: float | None = None
) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None once it is over.

    Jittered by up to a tenth, so deliveries that failed together do not return together. A
    receiver's ``Retry-After`` (429, 5xx) pushes the attempt later, never earlier, and never
    past the longest step of the schedule.
    """
    schedule: Sequence[float] = settings.webhook_retry_schedule
    if attempts > len(schedule):
        return None
    scale = settings.webhook_schedule_scale
    delay = schedule[attempts - 1] * scale
    delay += delay * random.uniform(0, 0.1)  # noqa: S311 - spreading load, not a secret
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule) * scale))
    return delay

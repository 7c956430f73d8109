"""Jobs as an operator reads them: a filtered list across tenants, and one job's story."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.money.models import LedgerEntry
from app.tenancy.models import Org
from app.webhooks.models import WebhookAttempt, WebhookDelivery

LIST_COLUMNS = ("id", "org", "model", "status", "account", "error", "created")


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    org: str | None = None
    model: str | None = None
    account: str | None = None
    error_code: str | None = None
    since: dt.datetime | None = None
    limit: int = 50


def list_jobs(session: Session, where: JobFilter) -> list[dict[str, Any]]:
    """Newest first: ids are ULIDs, so the primary key orders by creation."""
    query = select(Job, Org.name).join(Org, Org.id == Job.org_id).order_by(Job.id.desc())
    if where.status:
        query = query.where(Job.status == where.status.upper())
    if where.org:
        query = query.where(Org.name == where.org)
    if where.model:
        query = query.where(Job.model_name == where.model)
    if where.account:
        query = query.where(Job.account_id == where.account)
    if where.error_code:
        query = query.where(Job.error_code == where.error_code)
    if where.since:
        query = query.where(Job.created_at >= where.since)
    rows = session.execute(query.limit(where.limit)).all()
    return [
        {
            "id": job.id,
            "org": org,
            "model": job.model_name,
            "status": job.status,
            "account": job.account_id,
            "error": job.error_code,
            "created": job.created_at.isoformat(timespec="seconds"),
        }
        for job, org in rows
    ]


@dataclass
class Story:
    """Everything Chorus knows of one job, for the operator who has to explain it."""

    job: dict[str, Any]
    money: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "money": self.money, "deliveries": self.deliveries}


# The job's columns an operator reads, in the order a story tells them.
STORY_FIELDS = (
    "id", "status", "model_name", "surface", "price", "currency", "provider", "account_id",
    "generation_id", "submit_attempts", "poll_count", "invalid_responses", "error_code",
    "error_message", "created_at", "started_at", "finished_at", "deadline_at", "cancel_after_at",
    "next_action_at", "lease_until", "submitting_since", "waiting_since",
    "upstream_followup", "audio_key", "audio_format", "audio_duration_ms", "callback_url",
    "purged_at",
)  # fmt: skip


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def story(session: Session, job_id: str) -> Story | None:
    found = session.execute(
        select(Job, Org.name).join(Org, Org.id == Job.org_id).where(Job.id == job_id)
    ).first()
    if found is None:
        return None
    job, org = found
    told = Story({"org": org, **{name: _plain(getattr(job, name)) for name in STORY_FIELDS}})
    for entry in session.scalars(
        select(LedgerEntry).where(LedgerEntry.job_id == job.id).order_by(LedgerEntry.id)
    ):
        told.money.append(
            {
                "kind": entry.kind,
                "amount": entry.amount,
                "job_amount": entry.job_amount,
                "currency": entry.currency,
                "at": _plain(entry.created_at),
            }
        )
    deliveries = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.job_id == job.id).order_by(WebhookDelivery.id)
    ).all()
    attempts: dict[str, list[dict[str, Any]]] = {}
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
        .order_by(WebhookAttempt.id)
    ):
        attempts.setdefault(attempt.delivery_id, []).append(
            {
                "attempt": attempt.attempt,
                "at": _plain(attempt.started_at),
                "status_code": attempt.status_code,
                "latency_ms": attempt.latency_ms,
                "error": attempt.error,
            }
        )
    for delivery in deliveries:
        told.deliveries.append(
            {
                "id": delivery.id,
                "event": delivery.event_type,
                "url": delivery.url,
                "status": delivery.status,
                "attempts": attempts.get(delivery.id, []),
            }
        )
    return told

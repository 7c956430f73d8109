"""Endpoints, secrets, and the delivery outbox with its log of attempts."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from ulid import ULID

# The tables the foreign keys below point at must be known wherever these rows are written.
import app.jobs.models
import app.tenancy.models  # noqa: F401
from app.db import Base, utcnow

DELIVERY_ID_PREFIX = "msg_"


def new_delivery_id() -> str:
    # Sent as ``webhook-id``: the same on every attempt, so receivers can drop repeats.
    return DELIVERY_ID_PREFIX + str(ULID()).lower()


class WebhookEndpoint(Base):
    """An org's default target, used by every job that names no ``callback_url`` of its own."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"), unique=True)
    url: Mapped[str] = mapped_column(Text)
    # The event types to send; None means every one.
    events: Mapped[list[str] | None] = mapped_column(JSON)
    # Set when the receiver answered 410 Gone; a PUT of the endpoint enables it again.
    disabled_at: Mapped[dt.datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookSecret(Base):
    """An org's signing secret (``whsec_…``). During a rotation the old one signs too, until
    ``expires_at``; a secret with no ``expires_at`` is current."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (Index("ix_webhook_secrets_org", "org_id", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]


class WebhookDelivery(Base):
    """One event for one target: the outbox row, and its retry state.

    Written in the transaction that changes the job's status, so an event exists exactly when
    the change does. ``status`` is ``pending`` (an attempt is due at ``next_attempt_at``),
    ``delivered``, ``dead`` (the retry schedule ran out) or ``disabled`` (the target answered
    410 Gone, or the org's endpoint is disabled).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The scheduler's hot path: pending deliveries by due time.
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id", "id"),
        Index("ix_webhook_deliveries_org_status", "org_id", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_delivery_id)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    # Set when the target is the org's default endpoint rather than the job's callback_url.
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="SET NULL")
    )
    event_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    # When the status changed: the payload's ``timestamp``.
    event_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempt_count: Mapped[int] = mapped_column(default=0)
    # A redelivery asked for by the tenant: one attempt, then back to where it was.
    manual: Mapped[bool] = mapped_column(default=False)
    next_attempt_at: Mapped[dt.datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_until: Mapped[dt.datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: never updated, shown in the delivery log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempt: Mapped[int]
    manual: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[dt.datetime]
    # None when no answer came back (refused connection, timeout, blocked address).
    status_code: Mapped[int | None]
    latency_ms: Mapped[int]
    error: Mapped[str | None] = mapped_column(Text)

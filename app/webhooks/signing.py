"""Org signing secrets and Standard Webhooks signatures.

The framing (``{id}.{timestamp}.{body}``, HMAC-SHA256, ``v1,<base64>``) is the reference
``standardwebhooks`` library's, so any Standard Webhooks verifier accepts what Chorus sends.
During a rotation the previous secret keeps signing until it expires: every delivery then
carries both signatures, and a receiver holding either secret verifies it.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets as random
from collections.abc import Sequence

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from app.db import utcnow
from app.webhooks.models import WebhookSecret

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not one
SECRET_BYTES = 24  # the spec's floor for a symmetric key
# Secrets signing at once: the current one and the two before it. Each adds a signature to
# every delivery, so rotating in a loop must not grow the header without end.
MAX_LIVE_SECRETS = 3
# Secrets an org may make through the API in an hour: room to replace a leaked one (and to
# fix a mistake), never a loop. Each rotation is a row, and retired rows are pruned an hour
# after they stop signing, so an org holds at most about this many plus the live ones.
ROTATIONS_PER_HOUR = 5
ROTATION_WINDOW = dt.timedelta(hours=1)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(random.token_bytes(SECRET_BYTES)).decode()


def signing_secrets(session: Session, org_id: int, now: dt.datetime | None = None) -> list[str]:
    """The org's secrets that sign now, newest first."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(WebhookSecret.secret)
            .where(
                WebhookSecret.org_id == org_id,
                or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
            )
            .order_by(WebhookSecret.id.desc())
            .limit(MAX_LIVE_SECRETS)
        )
    )


def current_secret(session: Session, org_id: int) -> str:
    """The org's current secret, created on first use."""
    found = session.scalar(
        select(WebhookSecret.secret)
        .where(WebhookSecret.org_id == org_id, WebhookSecret.expires_at.is_(None))
        .order_by(WebhookSecret.id.desc())
        .limit(1)
    )
    if found is not None:
        return found
    secret = new_secret()
    session.add(WebhookSecret(org_id=org_id, secret=secret))
    session.flush()  # two first uses racing both get a secret; both then sign, which is harmless
    return secret


def next_rotation_at(
    session: Session, org_id: int, now: dt.datetime | None = None
) -> dt.datetime | None:
    """When the org may next rotate through the API, or None when it may now. Two rotations
    racing may both pass: the bound is against loops, and each is still a single row."""
    now = now or utcnow()
    recent = session.scalars(
        select(WebhookSecret.created_at)
        .where(WebhookSecret.org_id == org_id, WebhookSecret.created_at > now - ROTATION_WINDOW)
        .order_by(WebhookSecret.created_at.desc())
        .limit(ROTATIONS_PER_HOUR)
    ).all()
    if len(recent) < ROTATIONS_PER_HOUR:
        return None
    return recent[-1] + ROTATION_WINDOW


def rotate(session: Session, org_id: int, overlap: float) -> tuple[str, dt.datetime]:
    """A new current secret; the previous ones keep signing for ``overlap`` seconds, the
    newest ``MAX_LIVE_SECRETS - 1`` of them: older ones stop signing now."""
    now = utcnow()
    until = now + dt.timedelta(seconds=overlap)
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.org_id == org_id, WebhookSecret.expires_at.is_(None))
        .values(expires_at=until)
        .execution_options(synchronize_session=False)
    )
    kept = (
        select(WebhookSecret.id)
        .where(
            WebhookSecret.org_id == org_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
        .order_by(WebhookSecret.id.desc())
        .limit(MAX_LIVE_SECRETS - 1)
    )
    session.execute(
        update(WebhookSecret)
        .where(
            WebhookSecret.org_id == org_id,
            WebhookSecret.expires_at > now,
            WebhookSecret.id.not_in(kept.scalar_subquery()),
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(WebhookSecret)
        .where(
            WebhookSecret.org_id == org_id,
            WebhookSecret.expires_at < now - ROTATION_WINDOW,
        )
        .execution_options(synchronize_session=False)
    )
    secret = new_secret()
    session.add(WebhookSecret(org_id=org_id, secret=secret, created_at=now))
    session.flush()
    return secret, until


def signature(secrets: Sequence[str], msg_id: str, timestamp: dt.datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,…`` per signing secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets)


def headers(
    secrets: Sequence[str], msg_id: str, timestamp: dt.datetime, body: str
) -> dict[str, str]:
    # The timestamp is the attempt's own; the spec's receivers reject ones more than minutes old.
    stamp = timestamp.replace(microsecond=0)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature(secrets, msg_id, stamp, body),
        "content-type": "application/json",
    }

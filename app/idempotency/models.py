"""The idempotency keys an org has used, and the answer each one got."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

IN_PROGRESS = "in_progress"
DONE = "done"

# Stripe's limit; the IETF draft sets none.
MAX_KEY_LENGTH = 255


class IdempotencyKey(Base):
    """One org's use of one key: claimed ``in_progress``, then ``done`` with the answer.

    The unique (org, key) constraint is the claim: of two requests racing with one key, the
    database lets exactly one INSERT through. ``claim_token`` names the request holding the
    claim, so a request whose claim was taken over (it outlived ``locked_until``) cannot
    overwrite the newer one's answer.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("org_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    # SHA-256 of method, path and the body (JSON canonicalised): "the same request".
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    claim_token: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime]
    # An in-progress claim older than this belongs to a request that died: it may be taken over.
    locked_until: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]

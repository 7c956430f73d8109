"""The catalog: categories, models on sale, upstream accounts and the routes between them.

After the seed platform's ``llmcatelog`` / ``llm`` / ``llm_api_map`` tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, utcnow


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(1000))


class UpstreamAccount(Base):
    """One set of credentials at one upstream. The secret itself stays in the environment."""

    __tablename__ = "upstream_accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    base_url: Mapped[str] = mapped_column(String(500))
    credential_env: Mapped[str | None] = mapped_column(String(100))
    max_in_flight: Mapped[int] = mapped_column(default=20)
    enabled: Mapped[bool] = mapped_column(default=True)
    # How long one call may take: MiniMax holds a call open for minutes, others answer at once.
    read_timeout: Mapped[float | None]
    # The account name some upstreams want in the request (useapi.net's "account").
    upstream_account: Mapped[str | None] = mapped_column(String(200))


class AccountState(Base):
    """An account's circuit breaker, shared by every worker through the database."""

    __tablename__ = "account_states"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("upstream_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    failures: Mapped[int] = mapped_column(default=0)
    # Open until this moment: no new submits. After it, one probe at a time may try.
    open_until: Mapped[dt.datetime | None]
    probe_until: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    upstream_model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="published")
    description: Mapped[str | None] = mapped_column(String(1000))
    # Typical generation time and its spread: the poller uses them to decide when to look.
    expected_seconds: Mapped[float] = mapped_column(default=60.0)
    expected_spread: Mapped[float] = mapped_column(default=15.0)
    deadline_seconds: Mapped[float | None]
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Ask upstreams that can stream the audio (MiniMax) for it as it is made: the job then
    # has an early preview while it runs.
    stream: Mapped[bool] = mapped_column(default=False, server_default="false")
    # What a generation costs, in integer minor units of ``currency``, and the balance a
    # tenant must exceed to use the model (the seed's min_balance). The owning org uses it free.
    price: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    min_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    owner_org_id: Mapped[int | None] = mapped_column(ForeignKey("orgs.id"))

    routes: Mapped[list[Route]] = relationship(
        back_populates="model", order_by="Route.priority", cascade="all, delete-orphan"
    )

    @property
    def published(self) -> bool:
        return self.status == "published"


class Route(Base):
    """Model × category → upstream account, in fallback order (``priority`` ascending)."""

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("model_id", "category_id", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    category_id: Mapped[str] = mapped_column(ForeignKey("categories.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("upstream_accounts.id"))
    priority: Mapped[int] = mapped_column(default=0)

    model: Mapped[Model] = relationship(back_populates="routes")
    account: Mapped[UpstreamAccount] = relationship(lazy="joined")

"""Tenants as an operator sees them: each org's balances and its recent usage.

The usage is ``GET /v1/usage``'s report (``app.jobs.usage``) summed over the window by
currency, for every org in one query.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Job
from app.jobs.usage import created_between, totals
from app.money.models import Balance
from app.tenancy.models import Org

USAGE_DAYS = 30


@dataclass
class TenantView:
    name: str
    created: dt.datetime
    # One row per currency: currency, available and held (minor units).
    balances: list[dict[str, Any]] = field(default_factory=list)
    # One row per currency: currency, jobs, succeeded and amount charged (minor units).
    usage: list[dict[str, Any]] = field(default_factory=list)


def tenants(session: Session, now: dt.datetime | None = None) -> list[TenantView]:
    """Every org by name, with its balances and the usage of its jobs created on the last
    ``USAGE_DAYS`` days (today included, UTC)."""
    today = (now or utcnow()).date()
    views: dict[int, TenantView] = {
        org.id: TenantView(org.name, org.created_at)
        for org in session.scalars(select(Org).order_by(Org.name))
    }
    for balance in session.scalars(select(Balance).order_by(Balance.currency)):
        views[balance.org_id].balances.append(
            {"currency": balance.currency, "available": balance.available, "held": balance.held}
        )
    start = today - dt.timedelta(days=USAGE_DAYS - 1)
    for row in session.execute(
        select(Job.org_id, Job.currency, *totals())
        .where(*created_between(start, today))
        .group_by(Job.org_id, Job.currency)
        .order_by(Job.currency)
    ):
        views[row.org_id].usage.append(
            {
                "currency": row.currency,
                "jobs": int(row.jobs),
                "succeeded": int(row.succeeded or 0),
                "amount": int(row.charged or 0),
            }
        )
    return list(views.values())

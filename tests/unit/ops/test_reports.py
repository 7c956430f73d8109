"""``app.ops.reports`` and ``app.ops.tenants``: the aggregates only the ops console shows, on
jobs accepted as the API accepts them and ended at chosen times."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.db import Database, utcnow
from app.jobs.models import Job
from app.jobs.status import JobStatus
from app.money import ledger
from app.ops.reports import failures_by_code, throughput
from app.ops.tenants import USAGE_DAYS, tenants
from app.tenancy.keys import get_or_create_org
from config import Settings
from tests.conftest import funded_key
from tests.unit.jobs.support import new_job

pytestmark = pytest.mark.usefixtures("catalog", "api_key")

NOW = dt.datetime(2026, 3, 1, 12, 30, 45, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def ended(
    db: Database, settings: Settings, status: JobStatus, at: dt.datetime, **values: Any
) -> str:
    return new_job(db, settings, status=status, finished_at=at, **values)


def test_throughput_counts_jobs_ended_in_each_minute_of_the_last_hour(
    db: Database, settings: Settings
) -> None:
    ended(db, settings, JobStatus.SUCCEEDED, NOW - dt.timedelta(seconds=10))  # this minute
    ended(db, settings, JobStatus.FAILED, NOW.replace(second=0))  # this minute, its first instant
    ended(db, settings, JobStatus.CANCELLED, NOW - 5 * MINUTE)
    ended(db, settings, JobStatus.SUCCEEDED, NOW - 59 * MINUTE)  # the oldest minute shown
    ended(db, settings, JobStatus.SUCCEEDED, NOW - 61 * MINUTE)  # too old
    ended(db, settings, JobStatus.SUCCEEDED, NOW + MINUTE)  # after "now": not yet
    new_job(db, settings)  # queued: has not ended

    with db.session() as session:
        minutes = throughput(session, now=NOW)

    assert len(minutes) == 60
    assert minutes[-1].start == dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    assert minutes[0].start == dt.datetime(2026, 3, 1, 11, 31, tzinfo=dt.UTC)
    counts = {m.start: m.ended for m in minutes if m.ended}
    assert counts == {
        dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC): 2,
        dt.datetime(2026, 3, 1, 12, 25, tzinfo=dt.UTC): 1,
        dt.datetime(2026, 3, 1, 11, 31, tzinfo=dt.UTC): 1,
    }


def test_failures_by_code_in_the_last_day_most_frequent_first(
    db: Database, settings: Settings
) -> None:
    for minutes in (1, 2):
        ended(db, settings, JobStatus.FAILED, NOW - minutes * MINUTE, error_code="upstream_timeout")
    last = NOW - 3 * MINUTE
    ended(db, settings, JobStatus.FAILED, last, error_code="upstream_auth_failed")
    ended(db, settings, JobStatus.FAILED, NOW - dt.timedelta(hours=25), error_code="too_old")
    ended(db, settings, JobStatus.CANCELLED, NOW - MINUTE, error_code="cancelled_code")

    with db.session() as session:
        rows = failures_by_code(session, now=NOW)

    assert [(r["code"], r["jobs"]) for r in rows] == [
        ("upstream_timeout", 2),
        ("upstream_auth_failed", 1),
    ]
    assert rows[0]["last"] == NOW - MINUTE and rows[1]["last"] == last


def test_tenants_show_balances_and_thirty_days_of_usage(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        ledger.credit(session, get_or_create_org(session, "acme").id, "USD", 700)
    now = utcnow()
    done = new_job(db, settings, status=JobStatus.SUCCEEDED, finished_at=now)
    new_job(db, settings, status=JobStatus.FAILED, finished_at=now)
    new_job(db, settings)  # still queued: its price is held
    new_job(db, settings, created_at=now - dt.timedelta(days=USAGE_DAYS))  # outside the window
    funded_key(db, "globex", amount=0)  # an org with a key, no money and no jobs

    with db.session() as session:
        views = {t.name: t for t in tenants(session, now=now)}
        price = session.get_one(Job, done).price

    assert list(views) == ["acme", "globex"]
    acme = views["acme"]
    cny = {b["currency"]: b for b in acme.balances}
    assert set(cny) == {"CNY", "USD"} and cny["USD"] == {
        "currency": "USD",
        "available": 700,
        "held": 0,
    }
    # Four holds were taken at submit; nothing here captured or released them.
    assert cny["CNY"]["held"] == 4 * price
    assert acme.usage == [{"currency": "CNY", "jobs": 3, "succeeded": 1, "amount": price}]
    assert views["globex"].balances == [] and views["globex"].usage == []

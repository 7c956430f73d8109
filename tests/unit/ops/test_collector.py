"""The scrape-time collector (``app.ops.collector``): what the database says, read at the
moment of a scrape, against rows put there by the same code paths Chorus uses."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import update

from app.db import Database, utcnow
from app.jobs.accounts import BREAKER_THRESHOLD, Accounts
from app.jobs.models import Job
from app.money.models import Balance
from app.ops.collector import DatabaseCollector
from app.webhooks.models import WebhookDelivery
from config import Settings, load_settings
from tests.scrape import Samples, samples, value
from tests.serving import free_port
from tests.unit.jobs.support import new_job


def collected(db: Database) -> Samples:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(db))
    return samples(generate_latest(registry).decode())


def deliveries(db: Database, job_id: str, **statuses: int) -> None:
    now = utcnow()
    with db.transaction() as session:
        org_id = session.get_one(Job, job_id).org_id
        for status, count in statuses.items():
            for _ in range(count):
                session.add(
                    WebhookDelivery(
                        org_id=org_id,
                        job_id=job_id,
                        event_type="job.succeeded",
                        url="https://example.com/hook",
                        event_at=now,
                        status=status,
                        next_attempt_at=now - dt.timedelta(seconds=5)
                        if status == "pending"
                        else None,
                    )
                )


def test_backlog_breakers_webhooks_and_held_money(
    db: Database, settings: Settings, api_key: str, catalog: dict[str, Any]
) -> None:
    account = catalog["accounts"][0]["id"]
    for _ in range(BREAKER_THRESHOLD):
        Accounts(db).record_failure(account)
    overdue = new_job(db, settings, next_action_at=utcnow() - dt.timedelta(seconds=90))
    new_job(db, settings, next_action_at=utcnow() + dt.timedelta(hours=1))
    deliveries(db, overdue, pending=2, dead=3)

    found = collected(db)
    assert value(found, "chorus_database_up") == 1
    assert value(found, "chorus_jobs_due_unclaimed") == 1
    assert 90 <= value(found, "chorus_jobs_due_oldest_age_seconds") < 200
    assert value(found, "chorus_jobs_last_hour", status="QUEUED") == 2
    assert value(found, "chorus_webhook_deliveries", state="pending") == 2
    assert value(found, "chorus_webhook_deliveries", state="overdue") == 2
    assert value(found, "chorus_webhook_deliveries", state="dead") == 3
    provider = next(a["provider"] for a in catalog["accounts"] if a["id"] == account)
    states = {
        state: value(
            found, "chorus_upstream_breaker_state", account=account, provider=provider, state=state
        )
        for state in ("closed", "open", "probing")
    }
    assert states == {"closed": 0, "open": 1, "probing": 0}
    labels = {"account": account, "provider": provider}
    assert value(found, "chorus_upstream_breaker_failures", **labels) == BREAKER_THRESHOLD
    assert value(found, "chorus_upstream_enabled", **labels) == 1
    limit = next(a for a in catalog["accounts"] if a["id"] == account)["max_in_flight"]
    assert value(found, "chorus_upstream_max_in_flight", **labels) == limit
    assert value(found, "chorus_upstream_in_flight", **labels) == 0
    # Every account of the catalog is there, closed unless it failed.
    for other in catalog["accounts"]:
        if other["id"] != account:
            assert (
                value(
                    found,
                    "chorus_upstream_breaker_state",
                    account=other["id"],
                    provider=other["provider"],
                    state="closed",
                )
                == 1
            )

    # Two jobs hold their price: the ledger and the balances agree...
    ledger = value(found, "chorus_money_held_ledger_minor", currency="CNY")
    assert ledger > 0
    assert value(found, "chorus_money_held_balances_minor", currency="CNY") == ledger
    # ...until the balances' column drifts from the ledger.
    with db.transaction() as session:
        session.execute(update(Balance).values(held=Balance.held + 7))
    drifted = collected(db)
    assert value(drifted, "chorus_money_held_balances_minor", currency="CNY") == ledger + 7
    assert value(drifted, "chorus_money_held_ledger_minor", currency="CNY") == ledger


def test_a_database_that_does_not_answer_is_reported_not_raised(env: dict[str, str]) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    db = Database(load_settings({**env, "DATABASE_URL": closed}))
    try:
        found = collected(db)
    finally:
        db.engine.dispose()
    assert value(found, "chorus_database_up") == 0
    assert {name for name, _ in found} == {"chorus_database_up"}

"""What the database says at the moment of a scrape, as Prometheus metrics.

``/metrics`` registers one ``DatabaseCollector``: each scrape runs one set of queries (the
same ``chorus status`` reads, and the money's two totals), whatever the number of processes.
A database that cannot answer gives ``chorus_database_up 0`` and no other of these metrics,
rather than failing the scrape (the processes' own counters still matter then).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.exc import SQLAlchemyError

from app.db import Database
from app.money import ledger
from app.ops.status import LEADER_LOCK, snapshot

log = logging.getLogger(__name__)

BREAKER_STATES = ("closed", "open", "probing")


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class DatabaseCollector:
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        up = _gauge("chorus_database_up", "Whether the scrape's queries reached the database.")
        try:
            with self.db.transaction() as session:
                state = snapshot(session, LEADER_LOCK)
                held = ledger.held_totals(session)
        except SQLAlchemyError:
            log.warning("metrics: the database did not answer", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        leading = _gauge("chorus_scheduler_leading", "Whether a scheduler holds the leader's lock.")
        leading.add_metric([], 1 if state["scheduler_leading"] else 0)
        yield leading

        recent = _gauge(
            "chorus_jobs_last_hour", "Jobs created in the last hour, by status now.", ("status",)
        )
        for status, count in state["jobs_last_hour"].items():
            recent.add_metric([status], count)
        yield recent

        due = _gauge(
            "chorus_jobs_due_unclaimed", "Jobs due for a step that no worker has leased yet."
        )
        due.add_metric([], state["due_backlog"]["jobs"])
        yield due
        oldest = _gauge(
            "chorus_jobs_due_oldest_age_seconds",
            "How long the oldest due, unclaimed job has been due (0 when none is).",
        )
        oldest.add_metric([], state["due_backlog"]["oldest_seconds"])
        yield oldest

        webhooks = _gauge(
            "chorus_webhook_deliveries",
            "Webhook deliveries now pending (overdue: pending and past their time) or dead.",
            ("state",),
        )
        for name in ("pending", "overdue", "dead"):
            webhooks.add_metric([name], state["webhooks"][name])
        yield webhooks

        yield from _accounts(state["accounts"])
        yield from _money(held)


def _accounts(accounts: list[dict[str, object]]) -> Iterator[Metric]:
    labels = ("account", "provider")
    in_flight = _gauge(
        "chorus_upstream_in_flight", "Jobs holding a slot of the upstream account now.", labels
    )
    limit = _gauge(
        "chorus_upstream_max_in_flight", "The account's limit of jobs in flight.", labels
    )
    enabled = _gauge(
        "chorus_upstream_enabled", "Whether the account takes new jobs (1) or not (0).", labels
    )
    breaker = _gauge(
        "chorus_upstream_breaker_state",
        "The account's breaker: 1 for its current state (closed, open or probing), else 0.",
        (*labels, "state"),
    )
    failures = _gauge(
        "chorus_upstream_breaker_failures", "Consecutive failures the breaker counts.", labels
    )
    for account in accounts:
        names = [str(account["id"]), str(account["provider"])]
        in_flight.add_metric(names, _number(account["in_flight"]))
        limit.add_metric(names, _number(account["max_in_flight"]))
        enabled.add_metric(names, 1 if account["enabled"] else 0)
        failures.add_metric(names, _number(account["failures"]))
        for state in BREAKER_STATES:
            breaker.add_metric([*names, state], 1 if account["breaker"] == state else 0)
    yield from (in_flight, limit, enabled, breaker, failures)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _money(held: dict[str, ledger.Held]) -> Iterator[Metric]:
    in_ledger = _gauge(
        "chorus_money_held_ledger_minor",
        "Money held for jobs as the ledger's open holds say, in minor units.",
        ("currency",),
    )
    in_balances = _gauge(
        "chorus_money_held_balances_minor",
        "Money held for jobs as the balances' held column says, in minor units.",
        ("currency",),
    )
    for currency, totals in held.items():
        in_ledger.add_metric([currency], totals.ledger)
        in_balances.add_metric([currency], totals.balances)
    yield in_ledger
    yield in_balances

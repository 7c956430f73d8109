"""Webhook tasks: the hand-off of the scheduler's claims to a delivery thread pool."""

from __future__ import annotations

import logging
import os

from celery import Task, shared_task

from app.db import Database
from app.webhooks.delivery import Dispatcher
from app.webhooks.outbox import Claim

log = logging.getLogger(__name__)

# Claims per message: spread over the worker processes, each with its own thread pool.
BATCH_SIZE = 20

_dispatchers: dict[int, Dispatcher] = {}


def dispatcher(task: Task) -> Dispatcher:
    # One per process, built in the process that uses it (never inherited across a fork).
    pid = os.getpid()
    found = _dispatchers.get(pid)
    if found is None:
        settings = task.app.settings  # type: ignore[attr-defined]
        found = _dispatchers[pid] = Dispatcher(settings, Database(settings))
    return found


def send(claims: list[Claim]) -> None:
    """Send leased deliveries to the webhook workers, in batches."""
    for start in range(0, len(claims), BATCH_SIZE):
        batch = claims[start : start + BATCH_SIZE]
        deliver.apply_async(args=([[c.delivery_id, c.token] for c in batch],))


@shared_task(name="chorus.webhooks.deliver", bind=True, ignore_result=True)
def deliver(self: Task, claims: list[list[str]]) -> int:
    """Queue one attempt per claim on this process's delivery threads; returns at once.

    Losing the queued attempts (the process dies) costs only latency: their leases lapse and
    the scheduler claims the deliveries again.
    """
    dispatcher(self).submit((delivery_id, token) for delivery_id, token in claims)
    return len(claims)

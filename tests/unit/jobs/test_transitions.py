"""The one writer of a job's status (app.jobs.transitions) and its side effects (app.wiring).

Every path that ends a job (success, one job or a batch written at once; failure at submit or
at poll; the client's cancel; the deadline) runs each side effect exactly once: one settle
entry in the ledger, one webhook delivery per change, one wake-up for waiting requests. After
it, every way of changing the status is tried again on the ended row, its lease matching, and
each is a no-op: nothing is charged, enqueued or published twice. Counts come from the ledger
and outbox tables and from the Redis channel waiting requests listen on.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app import wiring
from app.db import Database, utcnow
from app.jobs import retention
from app.jobs.engine import Engine
from app.jobs.models import Job
from app.jobs.status import JobStatus
from app.jobs.transitions import Finished, Transitions
from app.jobs.waiting import channel_name
from app.money import ledger
from app.money.models import LedgerEntry
from app.providers.base import PollResult, PollState, ProviderError
from app.storage import AudioInfo
from app.webhooks.models import WebhookDelivery
from config import Settings
from tests.conftest import CREDIT, auth
from tests.unit.jobs.support import (
    MS,
    SUCCESS,
    claim,
    due_claims,
    new_job,
    row,
    set_row,
    step,
)
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog")

PRICE = 100  # music-2.6, in fen
EVENT = "music.generation."
CALLBACK = "http://hooks.example/chorus"


class Wakeups:
    """The channel that wakes ``Prefer: wait`` requests, listened to from the test."""

    def __init__(self, settings: Settings) -> None:
        self.client = redis.Redis.from_url(settings.redis_url)
        self.channel = channel_name(settings.redis_prefix)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(self.channel)
        # Subscribed once the server confirms: only then can no publish be missed.
        assert self._next()["type"] == "subscribe"
        self.seen: list[str] = []

    def _next(self) -> dict[str, Any]:
        for _ in range(30):
            message = self.pubsub.get_message(timeout=1.0)
            if message is not None:
                return message
        raise AssertionError("nothing arrived on the wake-up channel")

    def of(self, job_id: str) -> int:
        """How many wake-ups named ``job_id`` so far. A marker of the test's own is published
        last; the channel keeps its order, so every earlier publish has arrived before it."""
        marker = f"marker-{secrets.token_hex(4)}"
        self.client.publish(self.channel, marker)
        while (data := self._next()["data"].decode()) != marker:
            self.seen.append(data)
        return self.seen.count(job_id)

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def wakeups(settings: Settings) -> Iterator[Wakeups]:
    listener = Wakeups(settings)
    yield listener
    listener.close()


@dataclass
class World:
    engine: Engine
    script: Script
    db: Database
    settings: Settings
    client: Any
    key: str

    def job(self, **values: Any) -> str:
        """A job as the API accepts it, with a webhook target of its own."""
        return new_job(self.db, self.settings, callback_url=CALLBACK, **values)

    def running(self) -> str:
        job_id = self.job()
        assert step(self.engine, self.db, job_id) == "running"
        return job_id

    def cancel(self, job_id: str) -> int:
        response = self.client.post(
            f"/v1/music/generations/{job_id}/cancel", headers=auth(self.key)
        )
        return int(response.status_code)


@pytest.fixture
def world(
    engine: Engine, script: Script, db: Database, settings: Settings, client: Any, api_key: str
) -> World:
    return World(engine, script, db, settings, client, api_key)


# ------------------------------------------------------------------ the paths that end a job


def succeeded(world: World) -> list[str]:
    job_id = world.running()
    world.script.on_poll(SUCCESS)
    assert step(world.engine, world.db, job_id) == "succeeded"
    return [job_id]


def succeeded_in_a_batch(world: World) -> list[str]:
    jobs = [world.running() for _ in range(3)]
    claims = due_claims(world.engine, world.db, jobs)
    world.script.together = True
    world.script.on_poll(SUCCESS, SUCCESS, SUCCESS)
    assert world.engine.advance_many([(j, claims[j]) for j in jobs]) == ["succeeded"] * 3
    return jobs


def failed_at_submit(world: World) -> list[str]:
    job_id = world.job()
    world.script.on_submit(ProviderError("upstream_auth_failed", "bad key", retryable=False))
    assert step(world.engine, world.db, job_id) == "failed"
    return [job_id]


def failed_at_poll(world: World) -> list[str]:
    job_id = world.running()
    world.script.on_poll(PollResult(PollState.FAILED, error_code="upstream_rejected"))
    assert step(world.engine, world.db, job_id) == "failed"
    return [job_id]


def cancelled_queued(world: World) -> list[str]:
    job_id = world.job()
    assert world.cancel(job_id) == 200
    return [job_id]


def cancelled_running(world: World) -> list[str]:
    job_id = world.running()
    assert world.cancel(job_id) == 200
    return [job_id]


def expired(world: World) -> list[str]:
    jobs = [world.job(), world.running()]
    later = max(row(world.db, job_id).deadline_at for job_id in jobs) + MS
    assert world.engine.expire_overdue(now=later) == 2
    return jobs


# Each path, and what it ends with: the job's status and its webhook events, one of each.
PATHS: dict[str, tuple[Callable[[World], list[str]], JobStatus, list[str]]] = {
    "succeeded": (succeeded, JobStatus.SUCCEEDED, ["running", "succeeded"]),
    "succeeded-in-a-batch": (succeeded_in_a_batch, JobStatus.SUCCEEDED, ["running", "succeeded"]),
    "failed-at-submit": (failed_at_submit, JobStatus.FAILED, ["failed"]),
    "failed-at-poll": (failed_at_poll, JobStatus.FAILED, ["running", "failed"]),
    "cancelled-queued": (cancelled_queued, JobStatus.CANCELLED, ["cancelled"]),
    "cancelled-running": (cancelled_running, JobStatus.CANCELLED, ["running", "cancelled"]),
    "expired": (expired, JobStatus.FAILED, []),  # events checked per job below
}


def try_everything_again(world: World, job_id: str) -> None:
    """Every way of changing a status, at the ended job, holding the row's own lease: all
    refused by the state machine's guard."""
    writer = world.engine.transitions
    ended = row(world.db, job_id)
    info = AudioInfo("wav", 8000, 128, 1, 500, 10)
    assert not writer.succeed(Finished(ended, "again.wav", info))
    assert not writer.succeed_many([Finished(ended, "again.wav", info)])
    assert not writer.fail(ended, "upstream_failed", "again")
    assert not writer.move(ended, JobStatus.RUNNING)
    assert not writer.move(ended, JobStatus.CANCELLED)
    assert world.cancel(job_id) == 409
    assert world.engine.expire_overdue(now=ended.deadline_at + dt.timedelta(days=1)) == 0


def run(world: World, path: str) -> list[str]:
    make, status, _ = PATHS[path]
    jobs = make(world)
    for job_id in jobs:
        try_everything_again(world, job_id)
        assert row(world.db, job_id).status == status
    return jobs


def ledger_kinds(db: Database, job_id: str) -> list[str]:
    with db.session() as session:
        return sorted(session.scalars(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)))


def events(db: Database, job_id: str) -> Counter[str]:
    with db.session() as session:
        kinds = session.scalars(
            select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id)
        )
        return Counter(kind.removeprefix(EVENT) for kind in kinds)


def org_balance(db: Database, job_id: str) -> ledger.Totals:
    with db.session() as session:
        return ledger.balance(session, row(db, job_id).org_id, "CNY")


# ------------------------------------------------------------------ one test per side effect


@pytest.mark.parametrize("path", list(PATHS))
def test_money_moves_once_on_every_path_that_ends_a_job(world: World, path: str) -> None:
    jobs = run(world, path)

    captured = PATHS[path][1] == JobStatus.SUCCEEDED
    for job_id in jobs:
        assert ledger_kinds(world.db, job_id) == sorted(
            ["capture" if captured else "release", "hold"]
        )
    totals = org_balance(world.db, jobs[0])
    assert totals.held == 0
    assert totals.available == CREDIT - (PRICE * len(jobs) if captured else 0)


@pytest.mark.parametrize("path", list(PATHS))
def test_each_change_writes_one_webhook_event_on_every_path(world: World, path: str) -> None:
    jobs = run(world, path)

    expected = PATHS[path][2]
    if path == "expired":
        queued, running = jobs
        assert events(world.db, queued) == Counter(["failed"])
        assert events(world.db, running) == Counter(["running", "failed"])
        return
    for job_id in jobs:
        assert events(world.db, job_id) == Counter(expected)


@pytest.mark.parametrize("path", list(PATHS))
def test_waiters_are_woken_once_on_every_path(world: World, wakeups: Wakeups, path: str) -> None:
    jobs = run(world, path)

    for job_id in jobs:
        assert wakeups.of(job_id) == 1


def test_a_move_needs_the_lease_its_writer_holds(world: World, wakeups: Wakeups) -> None:
    job_id = world.running()
    token = claim(world.engine, job_id, now=row(world.db, job_id).next_action_at)
    leased = row(world.db, job_id)
    assert leased.lease_token == token
    writer = world.engine.transitions

    # Another holder's copy of the job: its state allows the move, its lease does not.
    stale = row(world.db, job_id)
    stale.lease_token = "not-the-lease"
    assert not writer.fail(stale, "upstream_failed", "a late worker")
    assert row(world.db, job_id).status == JobStatus.RUNNING
    assert ledger_kinds(world.db, job_id) == ["hold"]

    assert writer.fail(leased, "upstream_failed", "the lease holder")
    assert not writer.fail(leased, "upstream_failed", "the lease holder, again")

    assert row(world.db, job_id).status == JobStatus.FAILED
    assert ledger_kinds(world.db, job_id) == ["hold", "release"]
    assert events(world.db, job_id) == Counter(["running", "failed"])
    assert wakeups.of(job_id) == 1


def test_a_job_that_starts_running_wakes_no_waiter_and_moves_no_money(
    world: World, wakeups: Wakeups
) -> None:
    job_id = world.running()
    # A duplicated start (the same lease, the job already RUNNING) changes nothing.
    assert not world.engine.transitions.move(row(world.db, job_id), JobStatus.RUNNING)

    assert events(world.db, job_id) == Counter(["running"])
    assert ledger_kinds(world.db, job_id) == ["hold"]
    assert wakeups.of(job_id) == 0


def test_purging_an_ended_job_changes_no_status_and_runs_no_side_effect(
    world: World, wakeups: Wakeups
) -> None:
    [job_id] = succeeded(world)
    before = (ledger_kinds(world.db, job_id), events(world.db, job_id), wakeups.of(job_id))

    later = utcnow() + dt.timedelta(days=2)
    storage = world.engine.storage
    assert retention.purge_expired(world.db, storage, days=1, batch=10, now=later) == 1

    job = row(world.db, job_id)
    assert job.status == JobStatus.SUCCEEDED and job.purged_at is not None
    assert (ledger_kinds(world.db, job_id), events(world.db, job_id), wakeups.of(job_id)) == before


# ------------------------------------------------------------------ the hooks


def test_a_failing_side_effect_rolls_the_status_back_with_the_others(
    settings: Settings, db: Database, script: Script, api_key: str
) -> None:
    writer = wiring.writer(db, settings)

    def broken(_session: Any, _changes: Any) -> None:
        raise RuntimeError("a side effect failed")

    writer.on_change(broken)
    engine = Engine(settings, db, adapter_factory=script.factory, transitions=writer)
    job_id = new_job(db, settings, callback_url=CALLBACK)

    with pytest.raises(RuntimeError):
        engine.expire_overdue(now=row(db, job_id).deadline_at + MS)

    assert row(db, job_id).status == JobStatus.QUEUED
    assert ledger_kinds(db, job_id) == ["hold"]
    assert events(db, job_id) == Counter()


def test_a_hook_sees_each_change_once_in_its_transaction_and_after_the_commit(
    settings: Settings, db: Database, script: Script, api_key: str
) -> None:
    writer = Transitions(db)
    seen: list[tuple[str, str, JobStatus]] = []

    @writer.on_change
    def during(session: Any, changes: Any) -> None:
        for change in changes:
            # The hook's session sees the change it is part of.
            stored = session.get(Job, change.job.id, populate_existing=True)
            seen.append(("during", stored.status, change.status))

    @writer.after_commit
    def after(changes: Any) -> None:
        for change in changes:
            seen.append(("after", row(db, change.job.id).status, change.status))

    engine = Engine(settings, db, adapter_factory=script.factory, transitions=writer)
    job_id = new_job(db, settings)
    assert step(engine, db, job_id) == "running"
    set_row(db, job_id, next_action_at=utcnow())
    script.on_poll(SUCCESS)
    token = claim(engine, job_id)
    assert engine.advance(job_id, token) == "succeeded"
    assert engine.advance(job_id, token) == "skipped"

    running, succeeded_ = JobStatus.RUNNING, JobStatus.SUCCEEDED
    assert seen == [
        ("during", running, running),
        ("after", running, running),
        ("during", succeeded_, succeeded_),
        ("after", succeeded_, succeeded_),
    ]


def test_a_failing_hook_after_the_commit_leaves_the_change_standing(
    settings: Settings, db: Database, script: Script, api_key: str
) -> None:
    writer = wiring.writer(db, settings)
    woken: list[str] = []

    def broken(_changes: Any) -> None:
        raise RuntimeError("redis is away")

    writer.after_commit(broken)
    writer.after_commit(lambda changes: woken.extend(c.job.id for c in changes))
    engine = Engine(settings, db, adapter_factory=script.factory, transitions=writer)
    job_id = new_job(db, settings)

    assert engine.expire_overdue(now=row(db, job_id).deadline_at + MS) == 1

    assert row(db, job_id).status == JobStatus.FAILED
    assert ledger_kinds(db, job_id) == ["hold", "release"]
    assert woken == [job_id]  # the hooks after the failing one still ran


# Each webhook event names the status its change entered.
STATUS_OF_EVENT = {
    "running": "RUNNING",
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "cancelled": "CANCELLED",
}


@pytest.mark.parametrize("path", list(PATHS))
def test_each_change_is_logged_once_with_its_ids_on_every_path(
    world: World, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level("INFO", logger="chorus.jobs")
    jobs = run(world, path)

    expected = {job_id: [STATUS_OF_EVENT[e] for e in PATHS[path][2]] for job_id in jobs}
    if path == "expired":
        queued, running = jobs
        expected = {queued: ["FAILED"], running: ["RUNNING", "FAILED"]}
    lines = [r for r in caplog.records if r.name == "chorus.jobs" and r.levelname == "INFO"]
    for job_id in jobs:
        mine = [r for r in lines if getattr(r, "job_id", None) == job_id]
        assert [r.status for r in mine] == expected[job_id]  # type: ignore[attr-defined]
        org_id = row(world.db, job_id).org_id
        assert all(r.org_id == org_id for r in mine)  # type: ignore[attr-defined]
        for record in mine:
            assert record.getMessage() == f"job {job_id} {record.status}"  # type: ignore[attr-defined]
            if record.status == "RUNNING":  # type: ignore[attr-defined]
                # The upstream account and its generation id, known once it is running.
                assert record.account and record.generation_id  # type: ignore[attr-defined]
            if record.status == "FAILED":  # type: ignore[attr-defined]
                assert record.error_code == row(world.db, job_id).error_code  # type: ignore[attr-defined]

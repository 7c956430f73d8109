"""The API's status writer rings the scheduler's doorbell once per committed change, after it.

A cancel's webhook event and the account slot it frees wait for the scheduler; the writer
rings it (``app.jobs.effects.ring_doorbell``, registered by ``app.wiring.writer``) rather than
the view. Each ring is observed twice over: the real ``NOTIFY chorus_due`` the scheduler
listens for, and a count of ``ring()`` calls on the process's doorbell, taken together with
what another connection reads of the job at that instant.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from app import wiring
from app.db import Database, database_url
from app.doorbell import CHANNEL, Doorbell, connect, doorbell
from app.jobs.status import JobStatus
from tests.conftest import auth
from tests.unit.jobs.support import SUCCESS, new_job, row, step

pytestmark = pytest.mark.usefixtures("catalog")

# Longer than the doorbell's pause between NOTIFYs, by far: a second ring would show.
QUIET = 0.5


class Listener:
    """A connection listening on the doorbell's channel, as the scheduler's does."""

    def __init__(self, url: str) -> None:
        self.conn = connect(make_url(url))
        with self.conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")

    def heard(self, within: float) -> int:
        """How many NOTIFYs arrive within ``within`` seconds."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.conn], [], [], left)
            self.conn.poll()
        count = len(self.conn.notifies)
        self.conn.notifies.clear()
        return count

    def quiet(self) -> None:
        """Wait until no earlier ring (another test's) is still arriving."""
        while self.heard(QUIET):
            pass


@pytest.fixture
def listener(db: Database, settings: Any) -> Iterator[Listener]:
    listening = Listener(database_url(settings))
    listening.quiet()
    yield listening
    listening.conn.close()


@pytest.fixture
def rings(
    db: Database, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[dict[str, str]]]:
    """Each ``ring()`` of the process's doorbell (the API's, the engine's: one per database),
    with every job's status as another connection reads it at that moment; the ring goes on."""
    bell = doorbell(database_url(settings))
    ring = Doorbell.ring
    seen: list[dict[str, str]] = []

    def spied() -> None:
        with db.engine.connect() as conn:
            statuses = conn.exec_driver_sql("SELECT id, status FROM jobs").all()
        seen.append({job_id: status for job_id, status in statuses})
        ring(bell)

    monkeypatch.setattr(bell, "ring", spied)
    yield seen


def test_a_cancel_through_the_writer_rings_once_after_its_commit(
    db: Database, settings: Any, api_key: str, listener: Listener, rings: list[dict[str, str]]
) -> None:
    job_id = new_job(db, settings, callback_url="http://hooks.example/chorus")
    writer = wiring.writer(db, settings, bell=doorbell(database_url(settings)))
    heard_inside: list[int] = []

    @writer.on_change
    def inside(_session: Any, _changes: Any) -> None:
        # The change's transaction is still open: the other hooks have run, none may ring.
        heard_inside.append(listener.heard(QUIET))

    cancelled = writer.cancel(row(db, job_id).org_id, job_id)

    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    assert heard_inside == [0]
    assert rings == [{job_id: JobStatus.CANCELLED}]  # one ring, the change already committed
    assert listener.heard(QUIET) == 1


def test_the_cancel_view_rings_once_and_a_refused_cancel_not_at_all(
    db: Database,
    settings: Any,
    client: Any,
    api_key: str,
    listener: Listener,
    rings: list[dict[str, str]],
) -> None:
    job_id = new_job(db, settings)
    url = f"/v1/music/generations/{job_id}/cancel"

    assert client.post(url, headers=auth(api_key)).status_code == 200
    assert rings == [{job_id: JobStatus.CANCELLED}]
    assert listener.heard(QUIET) == 1

    assert client.post(url, headers=auth(api_key)).status_code == 409
    assert len(rings) == 1
    assert listener.heard(QUIET) == 0


def test_the_engine_rings_once_per_batch_not_per_change(
    engine: Any,
    script: Any,
    db: Database,
    settings: Any,
    api_key: str,
    listener: Listener,
    rings: list[dict[str, str]],
) -> None:
    """The workers' writer has no ring of its own: the engine rings once for what a batch
    wrote, its status changes among it."""
    job_id = new_job(db, settings, callback_url="http://hooks.example/chorus")
    assert step(engine, db, job_id) == "running"  # ``advance`` alone, outside a batch: no ring
    assert rings == []

    script.on_poll(SUCCESS)
    claims = engine.claim_due(lookahead=3600.0, limit=10)
    assert engine.advance_many([(c.job_id, c.token) for c in claims]) == ["succeeded"]

    assert rings == [{job_id: JobStatus.SUCCEEDED}]
    assert listener.heard(QUIET) == 1

"""Cancelling a job a real worker is following, on real Postgres, Redis, Celery worker and scheduler
processes and the simulator (useapi.net's protocol: one song at a time per account).

The API runs in-process (Flask's test client) against the database the worker uses.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog.models import UpstreamAccount
from app.db import Database
from app.jobs.accounts import Accounts
from app.jobs.upstreams import SIM_KEY
from app.money.models import LedgerEntry
from config import Settings
from tests.conftest import Processes, auth, job_rows, sim_record, wait_for
from tests.e2e.support import URL, read, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

USEAPI_1 = f"{SIM_KEY}|account-1"


def only_one_useapi_account(db: Database) -> None:
    """music-1.5 then runs on sim-useapi-1 alone: one slot. Before the workers start."""
    with db.transaction() as session:
        session.execute(
            sa.update(UpstreamAccount)
            .where(UpstreamAccount.id == "sim-useapi-2")
            .values(enabled=False)
        )


def ledger_of(db: Database, job_id: str) -> Counter[str]:
    with db.session() as session:
        return Counter(
            session.scalars(sa.select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))
        )


def generation(sim: str, generation_id: str) -> dict[str, Any]:
    rows = [g for g in sim_record(sim)["generations"] if g["id"] == generation_id]
    assert len(rows) == 1
    return rows[0]


def stored_files(settings: Settings) -> list[str]:
    root = settings.storage_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def slots(db: Database) -> int:
    with db.session() as session:
        return Accounts(db).in_flight(session, "sim-useapi-1")


def row(db: Database, job_id: str) -> Any:
    return next(j for j in job_rows(db) if j.id == job_id)


def running_alone(client: Any, db: Database, key: str, procs: Processes, prompt: str) -> str:
    """A useapi job, RUNNING on the only useapi account left, with a worker and the scheduler
    started."""
    only_one_useapi_account(db)
    procs.worker()
    procs.scheduler()
    job_id = submit(client, key, prompt, model="music-1.5")
    wait_for(
        lambda: read(client, key, job_id)["status"] == "RUNNING",
        30,
        message="the job to reach useapi",
    )
    return job_id


def test_cancel_running_job_stays_cancelled_and_the_busy_account_gets_no_second_song(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, settings: Settings
) -> None:
    doomed = running_alone(client, db, api_key, procs, "Cancelled ballad [sim:latency=4]")
    cancelled = client.post(f"{URL}/{doomed}/cancel", headers=auth(api_key))
    assert cancelled.status_code == 200, cancelled.get_json()
    assert cancelled.get_json()["status"] == "CANCELLED"
    assert cancelled.get_json()["cost"]["state"] == "released"
    # The account is still making the cancelled song: the next job must wait for it.
    after = submit(client, api_key, "Next in line [sim:latency=0.5]", model="music-1.5")

    jobs = wait_terminal(client, api_key, [after], timeout=60)
    assert jobs[after]["status"] == "SUCCEEDED", jobs[after]

    first = generation(sim, row(db, doomed).generation_id)
    second = generation(sim, row(db, after).generation_id)
    # The second song was only asked for once the first one was made...
    assert second["created_at"] >= first["ready_at"]
    record = sim_record(sim)
    stats = next(a for a in record["accounts"] if a["account"] == USEAPI_1)
    # ...so the account never ran two at once, and never had to refuse one.
    assert stats["max_concurrent"] == 1 and stats["rejected_busy"] == 0, stats
    # useapi was told (its scheduler call), once, while the song was still being made.
    told = [r for r in record["requests"] if r["kind"] == "cancel"]
    assert [(r["generation_id"], r["status_code"]) for r in told] == [(first["id"], 204)]
    assert told[0]["path"] == "/v1/minimax/scheduler/{id}"

    # The upstream finished the song; the job did not change, charged nothing, kept nothing.
    assert time.time() >= first["ready_at"]
    job = read(client, api_key, doomed)
    assert job["status"] == "CANCELLED" and job["audio"] is None, job
    assert job["cost"]["state"] == "released"
    assert ledger_of(db, doomed) == Counter({"hold": 1, "release": 1})
    assert ledger_of(db, after) == Counter({"hold": 1, "capture": 1})
    stored = row(db, doomed)
    assert stored.audio_key is None and stored.upstream_followup is None
    assert stored.lease_token is None and stored.next_action_at is None
    assert len(stored_files(settings)) == 1  # the second job's song only
    assert slots(db) == 0


def test_cancel_queued_job_never_reaches_the_upstream(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # The first job holds the only slot; the second waits QUEUED behind it and is cancelled.
    busy = running_alone(client, db, api_key, procs, "Holding the slot [sim:latency=3]")
    waiting = submit(client, api_key, "Never sent [sim:latency=0.5]", model="music-1.5")
    wait_for(
        lambda: row(db, waiting).waiting_since is not None,
        10,
        message="the second job to wait for the slot",
    )
    assert read(client, api_key, waiting)["status"] == "QUEUED"
    assert client.post(f"{URL}/{waiting}/cancel", headers=auth(api_key)).status_code == 200

    jobs = wait_terminal(client, api_key, [busy], timeout=60)
    assert jobs[busy]["status"] == "SUCCEEDED"
    time.sleep(1.0)  # a few sweeps after the slot came back
    assert read(client, api_key, waiting)["status"] == "CANCELLED"
    record = sim_record(sim)
    assert not [r for r in record["requests"] if "Never sent" in (r["prompt"] or "")]
    assert not [r for r in record["requests"] if r["kind"] == "cancel"]
    assert ledger_of(db, waiting) == Counter({"hold": 1, "release": 1})
    again = client.post(f"{URL}/{waiting}/cancel", headers=auth(api_key))
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "job_not_cancellable"

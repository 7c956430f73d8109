"""The client's deadline end to end: real Postgres, Redis, Celery worker and scheduler
processes and the simulator (useapi.net's protocol, which can be told to stop a song).

The API runs in-process (Flask's test client) against the database the worker uses.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.db import Database
from app.jobs.accounts import Accounts
from app.money import ledger
from tests.api.test_list_cancel import balance
from tests.conftest import CREDIT, GOOD_BODY, Processes, auth, sim_record, wait_for
from tests.e2e.support import URL, read, wait_terminal
from tests.e2e.test_cancel import generation, ledger_of, row

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

PRICE = 50  # music-1.5, in fen


def slots(db: Database) -> int:
    """Songs in flight on either useapi account, as Chorus counts them."""
    with db.session() as session:
        accounts = Accounts(db)
        return sum(accounts.in_flight(session, f"sim-useapi-{n}") for n in (1, 2))


def submit(client: Any, key: str, prompt: str, cancel_after: str) -> str:
    response = client.post(
        URL,
        json={**GOOD_BODY, "model": "music-1.5", "prompt": prompt},
        headers={**auth(key), "Cancel-After": cancel_after},
    )
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def test_a_job_past_its_cancel_after_fails_is_stopped_upstream_and_costs_nothing(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.worker()
    procs.scheduler()
    procs.wait_first_round()  # the deadline runs from the submit: the worker must be up
    start = time.monotonic()
    slow = submit(client, api_key, "A long ballad [sim:latency=30]", "5s")
    quick = submit(client, api_key, "A short jingle [sim:latency=0.5]", "30s")

    jobs = wait_terminal(client, api_key, [slow, quick], timeout=30)
    # Ended at its client's deadline, long before the song would have been made.
    assert time.monotonic() - start < 20
    assert jobs[slow]["status"] == "FAILED", jobs[slow]
    assert jobs[slow]["started_at"] is not None  # it had reached the upstream
    assert jobs[slow]["error"]["code"] == "cancel_after_elapsed"
    assert jobs[slow]["cost"]["state"] == "released" and jobs[slow]["audio"] is None
    assert jobs[slow]["finished_at"] - jobs[slow]["created"] in (5, 6)
    assert ledger_of(db, slow) == {"hold": 1, "release": 1}

    # The job that ended in time is charged as usual.
    assert jobs[quick]["status"] == "SUCCEEDED", jobs[quick]
    assert jobs[quick]["cost"]["state"] == "captured"
    assert ledger_of(db, quick) == {"hold": 1, "capture": 1}
    assert balance(db) == ledger.Totals(CREDIT - PRICE, 0)

    # useapi was told to stop the song, once. It goes on making it (the simulator, like
    # useapi, finishes what it started), so the job keeps its account's slot, watched, until
    # then: the account is not handed a second song meanwhile.
    stopped = generation(sim, row(db, slow).generation_id)
    wait_for(
        lambda: [r for r in sim_record(sim)["requests"] if r["kind"] == "cancel"],
        10,
        message="useapi to be told",
    )
    told = [r for r in sim_record(sim)["requests"] if r["kind"] == "cancel"]
    assert [(r["generation_id"], r["status_code"]) for r in told] == [(stopped["id"], 204)]
    assert time.time() < stopped["ready_at"]
    wait_for(lambda: row(db, slow).upstream_followup == "watch", 10, message="the watch")
    assert slots(db) == 1
    assert read(client, api_key, slow)["status"] == "FAILED"

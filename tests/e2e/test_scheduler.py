"""The scheduler as real processes: one leads, a standby takes over, the doorbell wakes it.

Real Postgres (the advisory lock, LISTEN/NOTIFY), Redis, Celery workers and the simulator;
the API runs in-process, so its doorbell rings from this test's process.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database
from tests.conftest import GOOD_BODY, Processes, auth, job_rows, sim_record, wait_for
from tests.e2e.test_logs import json_lines
from tests.e2e.test_money_faults import assert_settled_once, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"


def submit(client: Any, key: str, prompt: str = GOOD_BODY["prompt"]) -> str:
    response = client.post(URL, json={**GOOD_BODY, "prompt": prompt}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def leaders(procs: Processes, *names: str) -> list[str]:
    return [name for name in names if "scheduler: leading" in procs.log(name)]


def standing_by(procs: Processes, name: str) -> bool:
    return "standing by" in procs.log(name)


def test_two_schedulers_one_leads_and_a_standby_takes_over_from_a_killed_leader(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.worker()
    procs.scheduler("first")
    wait_for(lambda: leaders(procs, "first"), 60, message="the first scheduler to lead")
    procs.scheduler("second")
    wait_for(lambda: standing_by(procs, "second"), 60, message="the second to stand by")
    ids = [submit(client, api_key, f"Song {i} [sim:latency=2]") for i in range(6)]
    wait_for(
        lambda: sum(1 for j in job_rows(db) if j.status == "RUNNING") >= 3,
        60,
        message="jobs running",
    )
    # Still one leader: the second never got the lock while the first held it.
    assert leaders(procs, "first", "second") == ["first"]

    procs.kill("first")  # kill -9: its connection, and with it the lock, goes at once
    wait_for(lambda: leaders(procs, "second"), 30, message="the standby to take over")
    ids += [submit(client, api_key, f"Late song {i}") for i in range(3)]
    jobs = wait_terminal(client, api_key, ids, timeout=120)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    # Each job was submitted upstream once and charged once, across the change of leader.
    generations = sim_record(sim)["generations"]
    assert len(generations) == len(ids)
    assert all(g["submit_count"] == 1 for g in generations)
    assert_settled_once(db, jobs)


# The safety cap and the leases are far longer than the waits below: only the doorbell, rung
# by the API after the submit and by the worker after each write, can wake the scheduler.
@pytest.mark.env(SCHEDULER_MAX_SLEEP="300", LEASE_SECONDS="300")
def test_the_doorbell_wakes_a_sleeping_scheduler(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.worker()
    procs.scheduler()
    # Its first round sends the maintenance tasks; with nothing else due it then sleeps
    # until the safety cap, five minutes away.
    procs.wait_first_round()
    time.sleep(1.0)
    job_id = submit(client, api_key)
    # Far sooner than the cap: the submit's NOTIFY woke it, and each of the worker's writes
    # (the job RUNNING with its first poll due, then done) rang again.
    jobs = wait_terminal(client, api_key, [job_id], timeout=60)
    assert jobs[job_id]["status"] == "SUCCEEDED", jobs[job_id]


@pytest.mark.env(RETENTION_DAYS="30", RETENTION_INTERVAL="3600")
def test_the_maintenance_tasks_are_sent_and_an_idle_system_stays_quiet(
    procs: Processes,
) -> None:
    procs.worker()
    procs.webhooks_worker()
    procs.scheduler()
    names = ("worker", "webhooks", "scheduler")

    def ran(task: str) -> bool:
        return any(
            task in line and "succeeded" in line for line in procs.log("worker").splitlines()
        )

    wait_for(
        lambda: ran("chorus.purge_idempotency_keys") and ran("chorus.purge_expired"),
        90,
        message="both maintenance tasks to run",
    )
    wait_for(lambda: " ready." in procs.log("webhooks"), 60, message="the webhook worker")
    time.sleep(1.0)
    before = {name: len(procs.log(name).splitlines()) for name in names}
    time.sleep(15)
    added = {name: len(procs.log(name).splitlines()) - before[name] for name in names}
    # Nothing is due, so nothing is sent and nothing is logged; a tick would have logged
    # dozens of lines by now.
    assert sum(added.values()) <= 2, {name: procs.log(name)[-2000:] for name in names}
    # And what was logged, by each of them, is JSON lines (the default LOG_FORMAT).
    for name in names:
        assert json_lines(procs.log(name)), name


def test_a_leader_cut_off_from_the_database_stops_leading_then_leads_again(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.worker()
    procs.scheduler()
    wait_for(lambda: leaders(procs, "scheduler"), 60, message="the scheduler to lead")
    with db.engine.connect() as conn:
        cut = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'chorus scheduler' AND datname = current_database()"
            )
        ).all()
    assert cut == [(True,)]  # exactly one connection holds the lock and listens
    wait_for(
        lambda: "lost the database connection" in procs.log("scheduler"),
        30,
        message="the leader to notice",
    )
    wait_for(
        lambda: procs.log("scheduler").count("scheduler: leading") == 2,
        30,
        message="the lock taken again on a new connection",
    )
    job_id = submit(client, api_key)
    jobs = wait_terminal(client, api_key, [job_id], timeout=60)
    assert jobs[job_id]["status"] == "SUCCEEDED", jobs[job_id]

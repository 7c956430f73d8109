"""Recovery from faults around the jobs: the broker restarting under a working worker, and a
worker killed with SIGKILL. Real processes throughout: workers and a scheduler on a
redis-server of the test's own (the shared one is never restarted), the simulator, Postgres.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import Database
from tests.conftest import CREDIT, REDIS_PREFIX, Processes, job_rows, sim_record, wait_for
from tests.e2e.test_lifecycle import submits_per_job
from tests.e2e.test_money_faults import (
    PRICE,
    assert_balance,
    assert_settled_once,
    org_id,
    submit,
    wait_terminal,
    worker_ready,
)
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

# Where kombu keeps the messages delivered to a consumer and not yet acknowledged.
UNACKED = f"{REDIS_PREFIX}unacked"


@pytest.fixture
def broker(tmp_path: Path, procs: Processes) -> Iterator[RedisServer]:
    """A private redis-server as the broker of every process the test starts."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    procs.env["REDIS_URL"] = server.url
    yield server
    server.stop()


def connections(procs: Processes, name: str) -> int:
    """How many times the worker has connected to the broker so far."""
    return procs.log(name).count("Connected to ")


def consumed(procs: Processes, name: str) -> int:
    """How many messages the worker has taken from the broker so far."""
    return procs.log(name).count("] received")


@pytest.mark.timeout(300)
def test_a_worker_outlives_redis_restarts_and_every_job_ends(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, broker: RedisServer
) -> None:
    worker = procs.worker()
    # The other kinds of worker, idle here, must outlive the restarts too.
    others = {"sync": procs.sync_worker(), "webhooks": procs.webhooks_worker()}
    procs.scheduler()
    for name in ("worker", *others):
        worker_ready(procs, name)
    ids: list[str] = []
    for restart, keep_data in enumerate([False, True, False, True]):
        ids += [
            submit(client, api_key, f"Song {restart}.{i} [sim:latency=2] [sim:poll-hang=1]")
            for i in range(3)
        ]
        # Restart while the worker holds a message it has not acknowledged (late acks): the
        # case that made it exit, where closing the lost connection gives such messages back.
        wait_for(lambda: broker.hlen(UNACKED) > 0, 60, interval=0.02, message="a message held")
        before = connections(procs, "worker"), consumed(procs, "worker")
        broker.restart(keep_data=keep_data, down_for=0.2)

        # Consuming again: Celery's consumer reconnects (and says so), or redis-py's own retry
        # reconnects under it before Celery notices anything (and it just goes on).
        def again(before: tuple[int, int] = before) -> bool:
            return (
                connections(procs, "worker") > before[0]
                or consumed(procs, "worker") > before[1]
                or worker.poll() is not None
            )

        wait_for(again, 60, message="the worker to consume again")
        assert worker.poll() is None, procs.log("worker")[-6000:]
    # Only that same worker process can end these: it consumes again after the restarts.
    ids += [submit(client, api_key, f"Late song {i}") for i in range(3)]
    jobs = wait_terminal(client, api_key, ids, timeout=180)
    for name, proc in {"worker": worker, **others}.items():
        assert proc.poll() is None and "Unrecoverable error" not in procs.log(name), name
        assert connections(procs, name) > 1, procs.log(name)[-3000:]  # it reconnected
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    # Lost and redelivered messages alike: each job went upstream once, was charged once.
    assert submits_per_job(sim, db) == dict.fromkeys(ids, 1)
    assert_settled_once(db, jobs)
    assert_balance(db, org_id(db, "acme"), CREDIT - len(ids) * PRICE)


@pytest.mark.timeout(300)
@pytest.mark.env(LEASE_SECONDS="2", UPSTREAM_READ_TIMEOUT="8")
def test_a_worker_killed_mid_jobs_leaves_nothing_behind(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # Every submit is held by the upstream for longer than a lease: only renewals keep a
    # living worker's jobs its own.
    ids = [
        submit(client, api_key, f"Song {i} [sim:latency=2] [sim:submit-hang=3]") for i in range(10)
    ]
    procs.worker(name="doomed")
    procs.scheduler()
    wait_for(
        lambda: (
            sum(1 for j in job_rows(db) if j.status == "RUNNING") >= 3
            and any(j.submitting_since for j in job_rows(db) if j.status == "QUEUED")
        ),
        120,
        interval=0.05,
        message="jobs running and submits under way",
    )
    procs.kill("doomed")  # SIGKILL to the worker and its pool processes
    before = {j.id: j.status for j in job_rows(db)}
    # No job was taken from the living worker although each call outlasted its lease.
    assert "FAILED" not in before.values(), before

    procs.worker(name="rescuer")
    jobs = wait_terminal(client, api_key, ids, timeout=180)
    for job_id, job in jobs.items():
        if before[job_id] == "RUNNING":
            assert job["status"] == "SUCCEEDED", job
        elif job["status"] == "FAILED":
            # Killed while the upstream held its submit: it may exist there, so it is never
            # sent again.
            assert job["error"]["code"] == "upstream_unknown", job
    generations = sim_record(sim)["generations"]
    assert all(g["submit_count"] == 1 for g in generations)
    assert all(n <= 1 for n in submits_per_job(sim, db).values())
    assert_settled_once(db, jobs)
    succeeded = sum(1 for j in jobs.values() if j["status"] == "SUCCEEDED")
    assert_balance(db, org_id(db, "acme"), CREDIT - succeeded * PRICE)

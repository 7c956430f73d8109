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
from tests.conftest import CREDIT, REDIS_PREFIX, Processes, wait_for
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


@pytest.mark.timeout(300)
def test_a_worker_outlives_redis_restarts_and_every_job_ends(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, broker: RedisServer
) -> None:
    worker = procs.worker()
    procs.scheduler()
    worker_ready(procs)
    ids: list[str] = []
    for restart, keep_data in enumerate([False, True, False, True]):
        ids += [
            submit(client, api_key, f"Song {restart}.{i} [sim:latency=2] [sim:poll-hang=1]")
            for i in range(3)
        ]
        # Restart while the worker holds a message it has not acknowledged (late acks): the
        # case that made it exit, where closing the lost connection gives such messages back.
        wait_for(lambda: broker.hlen(UNACKED) > 0, 60, interval=0.02, message="a message held")
        before = connections(procs, "worker")
        broker.restart(keep_data=keep_data, down_for=0.2)
        wait_for(
            lambda: connections(procs, "worker") > before or worker.poll() is not None,  # noqa: B023 - read at once
            60,
            message="the worker to reconnect",
        )
        assert worker.poll() is None, procs.log("worker")[-6000:]
    # Only that same worker process can end these: it consumes again after the restarts.
    ids += [submit(client, api_key, f"Late song {i}") for i in range(3)]
    jobs = wait_terminal(client, api_key, ids, timeout=180)
    assert worker.poll() is None and "Unrecoverable error" not in procs.log("worker")
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    # Lost and redelivered messages alike: each job went upstream once, was charged once.
    assert submits_per_job(sim, db) == dict.fromkeys(ids, 1)
    assert_settled_once(db, jobs)
    assert_balance(db, org_id(db, "acme"), CREDIT - len(ids) * PRICE)

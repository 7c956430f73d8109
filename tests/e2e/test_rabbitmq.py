"""RabbitMQ as the broker: the end-to-end cases where the broker's own behaviour decides.

Every process here gets CELERY_BROKER_URL, a RabbitMQ virtual host of this run's own on the
machine's server (``amqp_url``); Redis still holds what it holds besides the queues (rate
limits, event wake-ups). Running the whole end-to-end suite twice would not fit `make test`'s
budget, and most of it never touches the broker beyond a message going out and coming back.
So RabbitMQ gets the cases whose outcome depends on how a broker delivers:

- the production shape whole (tests/e2e/test_procfile.py runs its module on Redis and on
  RabbitMQ: every process, every queue, Flower, `chorus status` reading queue depths);
- every connection dropped under a working worker and the scheduler, as a broker restart
  does (the shared server itself is never restarted: ``rabbitmqctl close_all_connections``
  on this run's virtual host). RabbitMQ then gives the unacknowledged messages back
  at once, where Redis waits for the visibility timeout, and they are delivered again.

A worker killed with SIGKILL is, to the broker, the same event: its connection closes with
messages unacknowledged. What differs (a dead worker's leases, a rescuer taking over) is no
longer the broker's business, and test_lifecycle and test_recovery check it on Redis;
running it here as well would add half as much again to the time RabbitMQ takes in the
suite.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.db import Database
from tests import rabbitmq
from tests.conftest import CREDIT, Processes, job_rows, wait_for
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

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]


@pytest.fixture
def env(env: dict[str, str], amqp_url: str) -> dict[str, str]:
    """Every process of the test on RabbitMQ."""
    return {**env, "CELERY_BROKER_URL": amqp_url}


def connections(procs: Processes, name: str) -> int:
    """How many times the process has connected to the broker so far."""
    return procs.log(name).count("Connected to amqp://")


@pytest.mark.timeout(240)
def test_a_worker_outlives_lost_connections_and_every_job_ends(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, amqp_url: str
) -> None:
    vhost = rabbitmq.vhost_of(amqp_url)
    worker = procs.worker()
    procs.scheduler()
    worker_ready(procs)
    ids: list[str] = []
    for drop in range(2):
        ids += [
            submit(client, api_key, f"Song {drop}.{i} [sim:latency=2] [sim:poll-hang=1]")
            for i in range(3)
        ]
        # Dropped while the worker holds a message it has not acknowledged (late acks): the
        # broker then gives it back, and the step under way still runs to its end.
        wait_for(
            lambda: rabbitmq.unacknowledged(vhost) > 0, 60, interval=0, message="a message held"
        )
        before = connections(procs, "worker")
        rabbitmq.drop_connections(vhost)
        wait_for(
            lambda before=before: (
                connections(procs, "worker") > before or worker.poll() is not None
            ),
            60,
            message="the worker to reconnect",
        )
        assert worker.poll() is None, procs.log("worker")[-6000:]
    # Sent by the scheduler after the drops, and ended by the same worker process.
    ids += [submit(client, api_key, f"Late song {i}") for i in range(3)]
    jobs = wait_terminal(client, api_key, ids, timeout=120)
    assert worker.poll() is None and "Unrecoverable error" not in procs.log("worker")
    assert procs.procs["scheduler"].poll() is None, procs.log("scheduler")[-3000:]
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    # Messages given back and delivered again: each job went upstream once, was charged once.
    assert submits_per_job(sim, db) == dict.fromkeys(ids, 1)
    assert len(job_rows(db)) == len(ids)
    assert_settled_once(db, jobs)
    assert_balance(db, org_id(db, "acme"), CREDIT - len(ids) * PRICE)

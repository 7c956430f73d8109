"""Upstream faults met by real workers: what reached the upstream decides what happens next.

Real Postgres, Redis, Celery worker and scheduler processes and the simulator. A TCP relay
(``tests.sockets.Relay``) stands between the worker and the simulator, or Postgres, where a
test must cut, hold or refuse a connection at a chosen moment. Upstream call counts come
from the simulator's record; the ledger from the database.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.catalog.models import AccountState
from app.db import Database, utcnow
from app.doorbell import CHANNEL
from app.jobs.accounts import BREAKER_THRESHOLD
from app.jobs.models import Job
from app.money.models import LedgerEntry
from tests.conftest import Processes, funded_key, job_rows, sim_record, wait_for
from tests.e2e.support import submit, wait_terminal
from tests.sockets import Relay, address

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]


def relay_to_sim(procs: Processes, sim: str, **options: Any) -> Relay:
    """A relay in front of the simulator; processes started after this call use it."""
    relay = Relay(address(sim), **options)
    procs.env["SIM_URL"] = f"http://127.0.0.1:{relay.port}"
    return relay


def relay_to_postgres(procs: Processes, database_url: str) -> Relay:
    """A relay in front of Postgres; processes started after this call use it."""
    url = make_url(database_url)
    relay = Relay((url.host or "127.0.0.1", url.port or 5432))
    procs.env["DATABASE_URL"] = url.set(host="127.0.0.1", port=relay.port).render_as_string(
        hide_password=False
    )
    return relay


def submits_of(sim: str, text: str) -> list[dict[str, Any]]:
    return [
        r
        for r in sim_record(sim)["requests"]
        if r["kind"] == "submit" and text in (r["prompt"] or "")
    ]


def made_for(sim: str, text: str) -> list[dict[str, Any]]:
    return [g for g in sim_record(sim)["generations"] if text in g["prompt"]]


def ledger(db: Database, job_id: str) -> list[tuple[str, int]]:
    with db.session() as session:
        rows = session.execute(
            sa.select(LedgerEntry.kind, LedgerEntry.amount)
            .where(LedgerEntry.job_id == job_id)
            .order_by(LedgerEntry.id)
        ).all()
    return [(kind, amount) for kind, amount in rows]


def the_job(db: Database, job_id: str) -> Job:
    (job,) = [j for j in job_rows(db) if j.id == job_id]
    return job


def lapse_lease(db: Database, job_id: str) -> None:
    """The killed worker's lease ends now rather than when it would (its length is not what
    these tests are about), and the scheduler is told."""
    with db.transaction() as session:
        session.execute(
            sa.update(Job).where(Job.id == job_id).values(lease_until=utcnow() - dt.timedelta(1))
        )
        session.execute(sa.text(f"NOTIFY {CHANNEL}"))


# ------------------------------------------------------------------ a worker killed mid-submit


@pytest.mark.env(UPSTREAM_CONNECT_TIMEOUT="60", UPSTREAM_READ_TIMEOUT="3")
def test_a_worker_killed_before_its_request_left_has_the_job_submitted_again(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.scheduler()
    # The upstream's address answers no connect until the gate opens: the worker is killed
    # with the job's slot taken and its connection still being made.
    front = relay_to_sim(procs, sim, gated=True)
    procs.worker(name="doomed")
    job_id = submit(client, api_key, "Killed while connecting")

    wait_for(
        lambda: the_job(db, job_id).submitting_since is not None,
        30,
        message="the worker to take the account's slot",
    )
    procs.kill("doomed")
    job = the_job(db, job_id)
    assert job.status == "QUEUED"
    assert job.submitting_since is not None and job.submit_sent_at is None

    front.open_gate()
    lapse_lease(db, job_id)
    procs.worker(name="rescuer")
    done = wait_terminal(client, api_key, [job_id], timeout=60)[job_id]
    front.close()

    # Nothing had reached the upstream: the job was sent once, and made once.
    assert done["status"] == "SUCCEEDED", done
    assert done["upstream"]["attempts"] == 1
    assert len(submits_of(sim, "Killed while connecting")) == 1
    assert len(made_for(sim, "Killed while connecting")) == 1
    assert [kind for kind, _ in ledger(db, job_id)] == ["hold", "capture"]


@pytest.mark.env(UPSTREAM_READ_TIMEOUT="60")
def test_a_worker_killed_after_its_request_left_fails_the_job_upstream_unknown(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.scheduler()
    arrived, release = threading.Event(), threading.Event()

    def hold(_data: bytes) -> bool:
        # The request reached the upstream's address; it stays there, unanswered.
        arrived.set()
        release.wait(60)
        return False

    front = relay_to_sim(procs, sim, on_request=hold)
    procs.worker(name="doomed")
    job_id = submit(client, api_key, "Killed while waiting for the answer")
    assert arrived.wait(30)
    procs.kill("doomed")
    release.set()
    job = the_job(db, job_id)
    assert job.submitting_since is not None and job.submit_sent_at is not None

    lapse_lease(db, job_id)
    procs.worker(name="rescuer")
    done = wait_terminal(client, api_key, [job_id], timeout=60)[job_id]
    front.close()

    # It may have reached the upstream: it is never sent again, and says what it may cost.
    assert done["status"] == "FAILED"
    assert done["error"]["code"] == "upstream_unknown"
    assert done["upstream"]["attempts"] == 1
    assert submits_of(sim, "Killed while waiting") == []
    assert [kind for kind, _ in ledger(db, job_id)] == ["hold", "release"]


# ------------------------------------------------------------------ Postgres away after the upstream took a job


OUTAGE = 30.0


@pytest.mark.env(UPSTREAM_READ_TIMEOUT="30")
def test_the_generation_id_survives_a_30_second_postgres_outage(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, database_url: str
) -> None:
    postgres = relay_to_postgres(procs, database_url)
    timer: list[threading.Timer] = []

    def cut_postgres(_data: bytes) -> bool:
        # The submit is on its way to the upstream, which will take it; Postgres goes away
        # for OUTAGE seconds (refusing connections, as during a restart).
        if not timer:
            postgres.cut()
            timer.append(threading.Timer(OUTAGE, postgres.restore))
            timer[0].start()
        return True

    front = relay_to_sim(procs, sim, on_request=cut_postgres)
    procs.worker()
    procs.scheduler()
    job_id = submit(client, api_key, "Taken while Postgres restarts")

    done = wait_terminal(client, api_key, [job_id], timeout=OUTAGE + 60)[job_id]
    timer[0].join()
    front.close()
    postgres.close()

    assert done["status"] == "SUCCEEDED", done
    assert done["upstream"]["attempts"] == 1
    (made,) = made_for(sim, "Taken while Postgres restarts")
    assert the_job(db, job_id).generation_id == made["id"]
    assert len(submits_of(sim, "Taken while Postgres restarts")) == 1
    assert [kind for kind, _ in ledger(db, job_id)] == ["hold", "capture"]
    assert "recording the submit failed, retrying" in procs.log("worker")


# ------------------------------------------------------------------ one poisoned job and a breaker


@pytest.mark.env(SUBMIT_MAX_ATTEMPTS=str(BREAKER_THRESHOLD))
def test_one_job_failing_with_5xx_never_holds_other_tenants_jobs(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    other = funded_key(db, "globex")
    procs.worker()
    procs.scheduler()
    # Every submit of this job answers 503 (nothing is made); music-2.6 has one account.
    poisoned = submit(client, api_key, "Poisoned [sim:submit-5xx]")
    ended = wait_terminal(client, api_key, [poisoned], timeout=90)[poisoned]
    assert ended["status"] == "FAILED"
    assert ended["error"]["code"] == "upstream_unavailable"
    assert ended["upstream"]["attempts"] == 0
    assert len(submits_of(sim, "Poisoned")) == BREAKER_THRESHOLD
    assert made_for(sim, "Poisoned") == []

    # As many failures as the breaker's threshold, from one job: it counted once, and the
    # breaker stays closed for every other job on the account.
    with db.session() as session:
        state = session.get(AccountState, "sim-aimlapi")
    assert state is not None
    assert (state.failures, state.open_until) == (1, None)
    healthy = [submit(client, other, f"Healthy song {i}") for i in range(3)]
    jobs = wait_terminal(client, other, healthy, timeout=60)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    for i in range(len(healthy)):
        assert len(submits_of(sim, f"Healthy song {i}")) == 1
    assert [kind for kind, _ in ledger(db, poisoned)] == ["hold", "release"]


# ------------------------------------------------------------------ MiniMax errors after a held call


def test_a_minimax_1000_after_a_held_call_is_sent_again_and_counted_in_the_job(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    procs.worker()
    procs.sync_worker()
    procs.scheduler()
    billed = submit(
        client, api_key, "Held then unknown error [sim:base-resp-once=1000]", model="music-2.0"
    )
    free = submit(client, api_key, "Rate limited [sim:base-resp-once=1002]", model="music-2.0")

    jobs = wait_terminal(client, api_key, [billed, free], timeout=90)

    # 1000 may follow work MiniMax charged for: the second submit is counted in the job.
    assert jobs[billed]["status"] == "SUCCEEDED", jobs[billed]
    assert jobs[billed]["upstream"] == {
        "provider": "minimax",
        "account": "sim-minimax",
        "attempts": 2,
    }
    assert len(submits_of(sim, "Held then unknown error")) == 2
    assert len(made_for(sim, "Held then unknown error")) == 2
    # A rate limit refused the call before any work: sent again, and not counted.
    assert jobs[free]["status"] == "SUCCEEDED", jobs[free]
    assert jobs[free]["upstream"]["attempts"] == 1
    assert len(submits_of(sim, "Rate limited")) == 2
    # The tenant pays once either way.
    for job_id in (billed, free):
        assert [kind for kind, _ in ledger(db, job_id)] == ["hold", "capture"]
    requests.post(f"{sim}/_sim/reset", timeout=5)

"""Exactly-once money under faults, with real worker and scheduler processes and the simulator.

Whatever happens to the workers (SIGKILL mid-call, every message delivered five times, late
stale messages after the end), each job has exactly one hold and exactly one capture (it
SUCCEEDED) or release (it FAILED), and the stored balance equals the one recomputed from the
ledger. Counts come straight from the ledger table with SQL.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from app.catalog.models import Model
from app.db import Database
from app.money import ledger
from app.tenancy.keys import get_or_create_org
from tests.conftest import CREDIT, GOOD_BODY, Processes, auth, funded_key, job_rows, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
PRICE = 100  # music-2.6, in fen
PRICES = {"music-2.6": PRICE, "minimax/music-1.5": 50}
STATE = {"QUEUED": "held", "RUNNING": "held", "SUCCEEDED": "captured", "FAILED": "released"}


def submit(
    client: Any, key: str, prompt: str = GOOD_BODY["prompt"], model: str = "music-2.6"
) -> str:
    body = {**GOOD_BODY, "prompt": prompt, "model": model}
    response = client.post(URL, json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["cost"] == {"amount": PRICES[model], "currency": "CNY", "state": "held"}
    job_id: str = job["id"]
    return job_id


def read(client: Any, key: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{URL}/{job_id}", headers=auth(key))
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    # At every moment the cost agrees with the status.
    expected = {"amount": PRICES[body["model"]], "currency": "CNY", "state": STATE[body["status"]]}
    assert body["cost"] == expected, body
    return body


def wait_terminal(
    client: Any, key: str, ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}

    def done() -> dict[str, dict[str, Any]] | None:
        last.update({i: read(client, key, i) for i in ids})
        return last if all(j["status"] in TERMINAL for j in last.values()) else None

    try:
        result: dict[str, dict[str, Any]] = wait_for(
            done, timeout, interval=0.25, message="jobs to end"
        )
    except AssertionError as exc:
        stuck = {i: j["status"] for i, j in last.items() if j["status"] not in TERMINAL}
        raise AssertionError(f"{exc}; still active: {stuck}") from None
    return result


def org_id(db: Database, name: str) -> int:
    with db.transaction() as session:
        return get_or_create_org(session, name).id


def entries_per_job(db: Database) -> dict[str, Counter[str]]:
    """For every job id found in the jobs table or the ledger: its ledger entries by kind."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT j.id AS job, l.job_id AS entry, l.kind FROM jobs j "
                "FULL OUTER JOIN ledger l ON l.job_id = j.id "
                "WHERE l.job_id IS NOT NULL OR j.id IS NOT NULL"
            )
        ).all()
    found: dict[str, Counter[str]] = {}
    for job, entry, kind in rows:
        counts = found.setdefault(job or entry, Counter())
        if kind is not None:
            counts[kind] += 1
    return found


def assert_settled_once(db: Database, jobs: dict[str, dict[str, Any]]) -> None:
    """One hold per job and one capture (SUCCEEDED) or release (FAILED); nothing else."""
    per_job = entries_per_job(db)
    assert set(per_job) == set(jobs), "ledger entries for unknown jobs, or jobs without any"
    for job_id, job in jobs.items():
        expected = "capture" if job["status"] == "SUCCEEDED" else "release"
        assert per_job[job_id] == {"hold": 1, expected: 1}, (job_id, job["status"], per_job[job_id])
    with db.engine.connect() as conn:
        duplicates = conn.execute(
            sa.text(
                "SELECT job_id, count(*) FROM ledger WHERE kind IN ('capture', 'release') "
                "GROUP BY job_id HAVING count(*) > 1"
            )
        ).all()
    assert duplicates == []


def assert_balance(db: Database, org: int, available: int, held: int = 0) -> None:
    with db.session() as session:
        stored = ledger.balance(session, org, "CNY")
        assert ledger.recompute(session, org, "CNY") == stored, "balance and ledger disagree"
    assert stored == ledger.Totals(available, held)


def worker_ready(procs: Processes, name: str = "worker") -> None:
    wait_for(lambda: " ready." in procs.log(name), 120, interval=0.25, message=f"{name} ready")


# ------------------------------------------------------------------ (a) SIGKILL


@pytest.mark.timeout(600)
@pytest.mark.env(LEASE_SECONDS="6", UPSTREAM_READ_TIMEOUT="6")
def test_worker_killed_mid_job_charges_every_job_exactly_once(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    polling = [
        submit(client, api_key, f"Song {i} [sim:latency=2] [sim:poll-hang=4]") for i in range(6)
    ]
    submitting = [submit(client, api_key, f"Song {i} [sim:submit-hang=4]") for i in range(4)]
    ids = polling + submitting
    procs.worker(name="doomed")
    procs.scheduler()
    # Kill -9 while the worker is inside the upstream calls (submits and polls hung).
    wait_for(
        lambda: sum(1 for j in job_rows(db) if j.status == "RUNNING") >= 6,
        120,
        message="jobs running",
    )
    time.sleep(2.5)
    procs.kill("doomed")
    # Nothing was settled for a job still in flight: its money is still held.
    org = org_id(db, "acme")
    with db.session() as session:
        mid = ledger.balance(session, org, "CNY")
        assert ledger.recompute(session, org, "CNY") == mid
    active = sum(1 for j in job_rows(db) if j.status in {"QUEUED", "RUNNING"})
    assert mid.held == active * PRICE

    procs.worker(name="rescuer")
    jobs = wait_terminal(client, api_key, ids, timeout=240)
    for job_id in polling:
        assert jobs[job_id]["status"] == "SUCCEEDED", jobs[job_id]
    for job_id in submitting:
        assert jobs[job_id]["status"] in {"FAILED", "SUCCEEDED"}, jobs[job_id]
    assert_settled_once(db, jobs)
    succeeded = sum(1 for j in jobs.values() if j["status"] == "SUCCEEDED")
    assert_balance(db, org, CREDIT - succeeded * PRICE)


# ------------------------------------------------------------------ (b) duplicated messages


def queues_drained(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return all(client.llen(q) == 0 for q in ("chorus.submit", "chorus.poll"))
    finally:
        client.close()


@pytest.mark.timeout(600)
def test_duplicated_messages_still_capture_each_job_once(
    client: Any,
    db: Database,
    api_key: str,
    sim: str,
    procs: Processes,
    settings: Any,
    redis_url: str,
) -> None:
    from app.jobs.engine import Engine
    from app.wiring import writer
    from workers import make_celery

    ids = [submit(client, api_key, f"Track {i}") for i in range(8)]
    engine = Engine(settings, db, transitions=writer(db, settings))
    claims = engine.claim_due(lookahead=1.0, limit=100)
    assert sorted(c.job_id for c in claims) == ids
    celery = make_celery(settings)
    message = [[c.job_id, c.token] for c in claims]
    for _ in range(5):  # every job's message, five times over
        celery.send_task("chorus.submit_jobs", args=(message,))
    procs.worker(concurrency=2)
    procs.scheduler()
    jobs = wait_terminal(client, api_key, ids, timeout=180)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    assert_settled_once(db, jobs)
    org = org_id(db, "acme")
    assert_balance(db, org, CREDIT - 8 * PRICE)

    # Late copies of every message, submit and poll alike, after the end change nothing.
    for _ in range(5):
        celery.send_task("chorus.submit_jobs", args=(message,))
        celery.send_task("chorus.poll_jobs", args=(message,))
    wait_for(lambda: queues_drained(redis_url), 120, message="the late copies to be consumed")
    time.sleep(2)  # let the last one run to its end
    assert_settled_once(db, {i: read(client, api_key, i) for i in ids})
    assert_balance(db, org, CREDIT - 8 * PRICE)


# ------------------------------------------------------------------ (c) failures release


@pytest.mark.timeout(600)
def test_failed_and_expired_jobs_give_the_money_back(
    client: Any, db: Database, sim: str, procs: Processes
) -> None:
    # A short deadline for one model only: on a busy machine the other jobs keep the default,
    # so their own failure (not the clock) is what ends them.
    with db.transaction() as session:
        session.execute(
            sa.update(Model).where(Model.name == "minimax/music-1.5").values(deadline_seconds=10)
        )
    funds = 2 * PRICE + PRICES["minimax/music-1.5"]
    key = funded_key(db, "thrifty", funds)
    org = org_id(db, "thrifty")
    procs.worker()
    procs.scheduler()
    worker_ready(procs)
    cases = {
        "[sim:error]": ("music-2.6", "upstream_failed"),
        "[sim:moderated]": ("music-2.6", "content_moderated"),
        "[sim:never]": ("minimax/music-1.5", "deadline_exceeded"),
    }
    ids = {
        marker: submit(client, key, f"Doomed tune {marker}", model)
        for marker, (model, _) in cases.items()
    }
    # The balance covered exactly these jobs: all of it is held now.
    assert_balance(db, org, 0, funds)
    refused = client.post(URL, json=GOOD_BODY, headers=auth(key))
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "insufficient_quota"

    jobs = wait_terminal(client, key, list(ids.values()), timeout=180)
    for marker, (model, code) in cases.items():
        job = jobs[ids[marker]]
        assert job["status"] == "FAILED", (marker, job)
        assert job["error"]["code"] == code, (marker, job)
        assert job["cost"] == {"amount": PRICES[model], "currency": "CNY", "state": "released"}
    assert_settled_once(db, jobs)
    assert_balance(db, org, funds)
    # The money is back in `available`: it buys the same jobs again, and no more (with the
    # workers stopped, so that none of them ends before the balance is read).
    procs.stop_all()
    for marker, (model, _) in cases.items():
        submit(client, key, f"Second try {marker.strip('[]')}", model)
    assert client.post(URL, json=GOOD_BODY, headers=auth(key)).status_code == 429
    assert_balance(db, org, 0, funds)


# ------------------------------------------------------------------ (d) the job's cost


def test_the_cost_moves_from_held_to_captured_or_released(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    good = submit(client, api_key, "Slow song [sim:latency=3]")
    bad = submit(client, api_key, "Failing song [sim:latency=3] [sim:error]")
    org = org_id(db, "acme")
    assert_balance(db, org, CREDIT - 2 * PRICE, 2 * PRICE)
    procs.worker()
    procs.scheduler()
    seen: dict[str, list[tuple[str, str]]] = {good: [], bad: []}
    balances: list[tuple[int, int]] = []

    def observe() -> bool:
        for job_id, trail in seen.items():
            job = read(client, api_key, job_id)  # also checks state against status
            step = (job["status"], job["cost"]["state"])
            if not trail or trail[-1] != step:
                trail.append(step)
        (row,) = client.get("/v1/balance", headers=auth(api_key)).get_json()["data"]
        balances.append((row["available"], row["held"]))
        return all(trail[-1][0] in TERMINAL for trail in seen.values())

    wait_for(observe, 180, interval=0.1, message="both jobs to end")
    assert seen[good][0] == ("QUEUED", "held")
    assert ("RUNNING", "held") in seen[good], seen[good]
    assert seen[good][-1] == ("SUCCEEDED", "captured")
    assert seen[bad][0] == ("QUEUED", "held")
    assert seen[bad][-1] == ("FAILED", "released")
    # /v1/balance moved with the jobs: held while they ran, then captured and released.
    assert balances[0] == (CREDIT - 2 * PRICE, 2 * PRICE)
    assert balances[-1] == (CREDIT - PRICE, 0)
    assert all(a + h in {CREDIT, CREDIT - PRICE} for a, h in balances), balances
    assert_settled_once(db, {good: {"status": "SUCCEEDED"}, bad: {"status": "FAILED"}})
    assert_balance(db, org, CREDIT - PRICE)

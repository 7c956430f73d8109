"""Listing and cancelling ``/v1/music/generations`` (real Postgres, the API in-process).

Cancels that race a worker run the real engine against the scripted upstream of
``tests.unit.providers.fake_adapter``: a scripted call can cancel the job through the API while the
"upstream" works, which puts the cancel exactly between the worker's read and its write.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.jobs.models import Job
from app.money import ledger
from app.money.models import LedgerEntry
from app.providers.base import PollResult, PollState, ProviderError, Submission
from app.tenancy.keys import get_or_create_org
from config import Settings
from tests.conftest import CREDIT, GOOD_BODY, auth
from tests.unit.jobs.support import PENDING, SUCCESS
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
PRICE = 100  # music-2.6, in fen


# ------------------------------------------------------------------ helpers


def submit(client: Any, key: str) -> str:
    response = client.post(URL, json=GOOD_BODY, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def listing(client: Any, key: str, query: str = "") -> dict[str, Any]:
    response = client.get(f"{URL}{query}", headers=auth(key))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def cancel(client: Any, key: str, job_id: str) -> Any:
    return client.post(f"{URL}/{job_id}/cancel", headers=auth(key))


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def set_row(db: Database, job_id: str, **values: Any) -> None:
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def ledger_of(db: Database, job_id: str) -> Counter[str]:
    with db.session() as session:
        return Counter(
            session.scalars(sa.select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))
        )


def balance(db: Database, org: str = "acme") -> ledger.Totals:
    with db.transaction() as session:
        org_id = get_or_create_org(session, org).id
        totals = ledger.balance(session, org_id, "CNY")
        # The balance row and the ledger must tell the same story.
        assert ledger.recompute(session, org_id, "CNY") == totals
        return totals


def stored_files(settings: Settings) -> list[str]:
    root = settings.storage_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def step(engine: Engine, job_id: str) -> str:
    """Make the job due now, let a sweep lease it, and advance it once.

    Other jobs of the test are pushed out of this sweep's way for the moment, so that it
    leases this one job only.
    """
    now = utcnow()
    with engine.db.transaction() as session:
        others = list(
            session.execute(
                sa.select(Job.id, Job.next_action_at).where(
                    Job.id != job_id, Job.next_action_at.is_not(None)
                )
            )
        )
        later = now + dt.timedelta(days=1)
        session.execute(
            sa.update(Job)
            .where(Job.id != job_id, Job.next_action_at.is_not(None))
            .values(next_action_at=later)
        )
        session.execute(sa.update(Job).where(Job.id == job_id).values(next_action_at=now))
    claims = engine.claim_due(lookahead=0.0, limit=100, now=now)
    with engine.db.transaction() as session:
        for other, due in others:
            session.execute(sa.update(Job).where(Job.id == other).values(next_action_at=due))
    assert [c.job_id for c in claims] == [job_id], f"job {job_id} was not claimed alone"
    return engine.advance(job_id, claims[0].token)


def slots_in_use(engine: Engine, account: str = "sim-aimlapi") -> int:
    with engine.db.session() as session:
        return engine.accounts.in_flight(session, account)


# ------------------------------------------------------------------ list


def test_pages_run_newest_first_with_cursors(client: Any, api_key: str) -> None:
    ids = [submit(client, api_key) for _ in range(5)]
    newest_first = sorted(ids, reverse=True)
    assert newest_first == ids[::-1]  # ULID ids sort by creation

    first = listing(client, api_key, "?limit=2")
    assert first["object"] == "list"
    assert [j["id"] for j in first["data"]] == newest_first[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (
        newest_first[0],
        newest_first[1],
        True,
    )
    second = listing(client, api_key, f"?limit=2&after={first['last_id']}")
    assert [j["id"] for j in second["data"]] == newest_first[2:4]
    assert second["has_more"] is True
    last = listing(client, api_key, f"?limit=2&after={second['last_id']}")
    assert [j["id"] for j in last["data"]] == newest_first[4:]
    assert (last["first_id"], last["last_id"], last["has_more"]) == (
        newest_first[4],
        newest_first[4],
        False,
    )
    # Exactly a page's worth left: no phantom next page.
    assert listing(client, api_key, f"?limit=4&after={first['first_id']}")["has_more"] is False
    beyond = listing(client, api_key, f"?after={last['last_id']}")
    assert beyond == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    # The default page holds them all, and each item is the job object GET returns.
    everything = listing(client, api_key)
    assert [j["id"] for j in everything["data"]] == newest_first
    for item in everything["data"]:
        assert item == client.get(f"{URL}/{item['id']}", headers=auth(api_key)).get_json()


def test_default_limit_is_20(client: Any, db: Database, api_key: str) -> None:
    for _ in range(21):
        submit(client, api_key)
    page = listing(client, api_key)
    assert len(page["data"]) == 20 and page["has_more"] is True
    assert len(listing(client, api_key, "?limit=100")["data"]) == 21


def test_status_filter(client: Any, db: Database, api_key: str) -> None:
    queued, done, failed, running = (submit(client, api_key) for _ in range(4))
    set_row(db, done, status="SUCCEEDED")
    set_row(db, failed, status="FAILED")
    set_row(db, running, status="RUNNING")
    assert cancel(client, api_key, queued).status_code == 200

    def ids(status: str) -> list[str]:
        return [j["id"] for j in listing(client, api_key, f"?status={status}")["data"]]

    assert ids("SUCCEEDED") == [done]
    assert ids("FAILED") == [failed]
    assert ids("RUNNING") == [running]
    assert ids("CANCELLED") == [queued]
    assert ids("QUEUED") == []
    page = listing(client, api_key, "?status=CANCELLED")
    assert page["data"][0]["status"] == "CANCELLED"


def test_an_org_sees_only_its_own_jobs(client: Any, api_key: str, other_key: str) -> None:
    mine = [submit(client, api_key) for _ in range(3)]
    theirs = [submit(client, other_key) for _ in range(2)]
    assert [j["id"] for j in listing(client, api_key)["data"]] == mine[::-1]
    assert [j["id"] for j in listing(client, other_key)["data"]] == theirs[::-1]
    # Another org's id as a cursor only marks a point in time: it reveals nothing of theirs.
    page = listing(client, api_key, f"?after={theirs[-1]}")
    assert {j["id"] for j in page["data"]} <= set(mine)
    assert client.get(URL).status_code == 403


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=", "limit"),
        ("?status=queued", "status"),
        ("?status=DONE", "status"),
        ("?after=123", "after"),
        ("?after=luid_../../etc", "after"),
        ("?order=asc", "order"),
    ],
)
def test_bad_list_params_are_400_naming_the_param(
    client: Any, api_key: str, query: str, param: str
) -> None:
    error = error_of(client.get(f"{URL}{query}", headers=auth(api_key)), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


# ------------------------------------------------------------------ cancel


def test_cancel_a_queued_job_releases_its_hold_once(
    client: Any, db: Database, api_key: str
) -> None:
    job_id = submit(client, api_key)
    assert balance(db) == ledger.Totals(CREDIT - PRICE, PRICE)

    response = cancel(client, api_key, job_id)
    assert response.status_code == 200
    job = response.get_json()
    assert job["id"] == job_id and job["status"] == "CANCELLED"
    assert job["cost"] == {"amount": PRICE, "currency": "CNY", "state": "released"}
    assert job["finished_at"] is not None
    assert job["audio"] is None and job["error"] is None
    assert client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json() == job

    assert balance(db) == ledger.Totals(CREDIT, 0)
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    stored = row(db, job_id)
    # Nothing was sent upstream: nothing to follow, no slot, nothing due.
    assert stored.upstream_followup is None
    assert stored.next_action_at is None and stored.lease_token is None


def test_cancel_twice_is_409_the_second_time_and_changes_nothing(
    client: Any, db: Database, api_key: str
) -> None:
    job_id = submit(client, api_key)
    assert cancel(client, api_key, job_id).status_code == 200
    before = (row(db, job_id).updated_at, balance(db), ledger_of(db, job_id))

    error = error_of(cancel(client, api_key, job_id), 409)
    assert error["code"] == "job_not_cancellable"
    assert error["type"] == "conflict_error"
    assert "CANCELLED" in error["message"]
    assert (row(db, job_id).updated_at, balance(db), ledger_of(db, job_id)) == before


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED"])
def test_cancel_an_ended_job_is_409(client: Any, db: Database, api_key: str, status: str) -> None:
    job_id = submit(client, api_key)
    set_row(db, job_id, status=status)
    error = error_of(cancel(client, api_key, job_id), 409)
    assert error["code"] == "job_not_cancellable"
    assert row(db, job_id).status == status
    assert ledger_of(db, job_id) == Counter({"hold": 1})


def test_cancel_another_orgs_job_or_an_unknown_id_is_404(
    client: Any, db: Database, api_key: str, other_key: str
) -> None:
    theirs = submit(client, other_key)
    for job_id in (theirs, "luid_01aaaaaaaaaaaaaaaaaaaaaaaa", "x" * 500):
        error = error_of(cancel(client, api_key, job_id), 404)
        assert error["code"] == "not_found"
    assert row(db, theirs).status == "QUEUED"
    assert ledger_of(db, theirs) == Counter({"hold": 1})
    assert cancel(client, other_key, theirs).status_code == 200


def test_a_worker_holding_a_cancelled_queued_job_sends_nothing(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = submit(client, api_key)
    claims = [c for c in engine.claim_due(lookahead=0.0, limit=10) if c.job_id == job_id]
    assert cancel(client, api_key, job_id).status_code == 200
    assert engine.advance(job_id, claims[0].token) == "skipped"
    assert script.calls == []
    assert row(db, job_id).status == "CANCELLED"


# ------------------------------------------------------------------ cancel vs the worker


def test_cancel_while_the_success_poll_is_in_flight_wins_and_nothing_is_captured(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script, settings: Settings
) -> None:
    job_id = submit(client, api_key)
    assert step(engine, job_id) == "running"

    def cancel_then_finish(_: str) -> PollResult:
        assert cancel(client, api_key, job_id).status_code == 200
        return SUCCESS

    script.on_poll(cancel_then_finish)
    assert step(engine, job_id) == "lost"

    job = row(db, job_id)
    assert job.status == "CANCELLED"
    assert job.audio_key is None and stored_files(settings) == []
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    assert balance(db) == ledger.Totals(CREDIT, 0)
    # The upstream said it is done: the job gives its lease and its account slot back at once.
    assert job.upstream_followup is None and job.lease_token is None
    assert slots_in_use(engine) == 0


def test_success_written_before_the_cancel_makes_the_cancel_409(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = submit(client, api_key)
    assert step(engine, job_id) == "running"
    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "succeeded"

    assert error_of(cancel(client, api_key, job_id), 409)["code"] == "job_not_cancellable"
    assert row(db, job_id).status == "SUCCEEDED"
    assert ledger_of(db, job_id) == Counter({"hold": 1, "capture": 1})
    assert balance(db) == ledger.Totals(CREDIT - PRICE, 0)


def test_cancel_racing_the_success_write_settles_each_job_exactly_once(
    app: Any, db: Database, api_key: str, engine: Engine, script: Script, settings: Settings
) -> None:
    client = app.test_client()
    ids = []
    for _ in range(12):
        ids.append(submit(client, api_key))
        assert step(engine, ids[-1]) == "running"
    script.on_poll(*[SUCCESS] * len(ids))
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id.in_(ids)).values(next_action_at=utcnow()))
    tokens = {c.job_id: c.token for c in engine.claim_due(lookahead=0.0, limit=100)}
    assert set(tokens) == set(ids)

    outcomes: dict[str, tuple[str, int]] = {}

    def race(job_id: str) -> None:
        barrier = threading.Barrier(2)
        answer: dict[str, Any] = {}

        def work() -> None:
            barrier.wait()
            answer["worker"] = engine.advance(job_id, tokens[job_id])

        def cancel_it() -> None:
            barrier.wait()
            answer["cancel"] = cancel(app.test_client(), api_key, job_id).status_code

        threads = [threading.Thread(target=work), threading.Thread(target=cancel_it)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        outcomes[job_id] = (answer["worker"], answer["cancel"])

    for job_id in ids:
        race(job_id)

    for job_id in ids:
        job = row(db, job_id)
        worker, cancelled = outcomes[job_id]
        kinds = ledger_of(db, job_id)
        if job.status == "SUCCEEDED":
            assert (worker, cancelled) == ("succeeded", 409)
            assert kinds == Counter({"hold": 1, "capture": 1})
            assert job.audio_key is not None
        else:
            assert job.status == "CANCELLED"
            assert cancelled == 200
            assert kinds == Counter({"hold": 1, "release": 1})
            assert job.audio_key is None
    succeeded = sum(row(db, i).status == "SUCCEEDED" for i in ids)
    assert balance(db) == ledger.Totals(CREDIT - PRICE * succeeded, 0)
    # Only the winners' copies are kept.
    assert len(stored_files(settings)) == succeeded


def test_cancel_running_tells_the_upstream_and_keeps_the_slot_until_it_ends(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script, settings: Settings
) -> None:
    job_id = submit(client, api_key)
    assert step(engine, job_id) == "running"
    assert slots_in_use(engine) == 1

    assert cancel(client, api_key, job_id).status_code == 200
    job = row(db, job_id)
    assert job.upstream_followup == "cancel"
    assert slots_in_use(engine) == 1  # the upstream is still making the song

    script.on_poll(PENDING)
    assert step(engine, job_id) == "following"
    assert [c.arg for c in script.cancels] == ["gen-1"]
    assert row(db, job_id).upstream_followup == "watch"
    assert slots_in_use(engine) == 1

    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "cancelled"
    assert len(script.cancels) == 1  # told once
    job = row(db, job_id)
    assert job.status == "CANCELLED" and job.audio_key is None
    assert job.upstream_followup is None and job.next_action_at is None
    assert job.lease_token is None
    assert slots_in_use(engine) == 0
    assert stored_files(settings) == []
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    # Nothing is due for it any more.
    assert all(c.job_id != job_id for c in engine.claim_due(lookahead=60.0, limit=100))


def test_a_failure_to_tell_the_upstream_does_not_undo_the_cancel(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = submit(client, api_key)
    assert step(engine, job_id) == "running"
    assert cancel(client, api_key, job_id).status_code == 200
    script.on_cancel(ProviderError("upstream_unavailable", "HTTP 503", retryable=True))
    script.on_poll(PollResult(PollState.FAILED, raw_status="error"))
    assert step(engine, job_id) == "cancelled"
    job = row(db, job_id)
    assert job.status == "CANCELLED" and job.error_code is None
    assert job.upstream_followup is None
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_cancel_during_the_submit_call_follows_the_job_the_upstream_made(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = submit(client, api_key)

    def cancel_then_accept(_: Any) -> Submission:
        assert cancel(client, api_key, job_id).status_code == 200
        # The submit is under way: the account's slot stays taken.
        assert row(db, job_id).upstream_followup == "cancel"
        return Submission("gen-late")

    script.on_submit(cancel_then_accept)
    assert step(engine, job_id) == "lost"
    job = row(db, job_id)
    assert job.status == "CANCELLED" and job.started_at is None
    assert job.generation_id == "gen-late"
    # Handed straight to the follow-up: lease given back, due now.
    assert job.lease_token is None and job.next_action_at is not None
    assert slots_in_use(engine) == 1

    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "cancelled"
    assert [c.arg for c in script.cancels] == ["gen-late"]
    assert slots_in_use(engine) == 0
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_cancel_during_a_submit_that_fails_frees_the_slot_at_once(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = submit(client, api_key)

    def cancel_then_fail(_: Any) -> Submission:
        assert cancel(client, api_key, job_id).status_code == 200
        raise ProviderError("invalid_request", "HTTP 400: no", retryable=False)

    script.on_submit(cancel_then_fail)
    step(engine, job_id)
    job = row(db, job_id)
    assert job.status == "CANCELLED" and job.error_code is None
    assert job.upstream_followup is None and job.lease_token is None
    assert slots_in_use(engine) == 0
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_a_follow_up_ends_at_the_jobs_deadline(
    client: Any, db: Database, api_key: str, engine: Engine
) -> None:
    job_id = submit(client, api_key)
    assert step(engine, job_id) == "running"
    assert cancel(client, api_key, job_id).status_code == 200
    set_row(db, job_id, deadline_at=utcnow())
    assert engine.expire_overdue() == 0  # a cancelled job is not failed again
    job = row(db, job_id)
    assert job.status == "CANCELLED" and job.upstream_followup is None
    assert slots_in_use(engine) == 0
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_a_repeated_cancel_with_its_idempotency_key_replays_the_answer(
    client: Any, db: Database, api_key: str
) -> None:
    job_id = submit(client, api_key)
    headers = {**auth(api_key), "Idempotency-Key": f"cancel-{job_id}"}
    first = client.post(f"/v1/music/generations/{job_id}/cancel", headers=headers)
    again = client.post(f"/v1/music/generations/{job_id}/cancel", headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json["status"] == "CANCELLED"
    # Without the key, a second cancel is the plain 409.
    assert error_of(cancel(client, api_key, job_id), 409)["code"] == "job_not_cancellable"
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})

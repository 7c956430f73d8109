"""Money at the API (CONTRACT §1a rule 4 and §3): holds at submit, the per-org cap, the
account endpoints, and API keys.

The race runs against a real gunicorn (two processes, sixteen threads each) on real Postgres,
hit by fifty client threads: the balance row lock has to hold across processes, not just
threads of one. The key-leak test runs a job through gunicorn, a Celery worker and the scheduler, and
looks for the secret in everything they wrote: logs, the database and the broker.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa

from app.catalog.models import Model
from app.db import Database
from app.jobs.models import Job
from app.money import ledger
from app.money.models import LedgerEntry
from app.tenancy.keys import get_or_create_org
from app.tenancy.models import ApiKey
from tests.conftest import (
    CREDIT,
    GOOD_BODY,
    ROOT,
    Processes,
    auth,
    commit_once_blocked,
    funded_key,
    statements_on,
    wait_for,
)
from tests.serving import start_web

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
PRICE = 100  # music-2.6, in fen


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def org_id(db: Database, name: str) -> int:
    with db.transaction() as session:
        return get_or_create_org(session, name).id


def balance_of(db: Database, org: int, currency: str = "CNY") -> ledger.Totals:
    with db.session() as session:
        stored = ledger.balance(session, org, currency)
        assert ledger.recompute(session, org, currency) == stored, "ledger disagrees"
    assert stored.available >= 0 and stored.held >= 0, stored
    return stored


def ledger_kinds(db: Database, org: int | None = None) -> Counter[str]:
    query = sa.select(LedgerEntry.kind)
    if org is not None:
        query = query.where(LedgerEntry.org_id == org)
    with db.session() as session:
        return Counter(session.scalars(query).all())


def set_model(db: Database, name: str, **values: Any) -> None:
    with db.transaction() as session:
        session.execute(sa.update(Model).where(Model.name == name).values(**values))


def finish(db: Database, job_id: str, status: str, duration_ms: int | None = None) -> None:
    """End a job the way the engine does: terminal status and settlement in one transaction."""
    with db.transaction() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(status=status, audio_duration_ms=duration_ms)
        )
        ledger.settle(session, job_id, capture=status == "SUCCEEDED")


def submit(client: Any, key: str, **extra: Any) -> Any:
    return client.post(URL, json={**GOOD_BODY, **extra}, headers=auth(key))


# ------------------------------------------------------------------ a real server


@pytest.fixture
def web(procs: Processes) -> str:
    return start_web(procs)


class Client:
    """One keep-alive HTTP session per client thread."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.local = threading.local()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        return session

    def post(self, _: int = 0) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        response = self.session().post(
            f"{self.base}{URL}", json=GOOD_BODY, headers=auth(self.key), timeout=180
        )
        # Header names are case-insensitive (the server sends them in lower case).
        return response.status_code, response.json(), response.headers


class BalanceWatcher:
    """Reads the org's balance row over and over while a test races it."""

    def __init__(self, db: Database, org: int) -> None:
        self.db, self.org = db, org
        self.samples: list[tuple[int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        query = sa.text("SELECT available, held FROM balances WHERE org_id = :org")
        with self.db.engine.connect() as conn:
            while not self.stop.is_set():
                row = conn.execute(query, {"org": self.org}).first()
                conn.rollback()
                if row is not None:
                    self.samples.append((int(row[0]), int(row[1])))
                time.sleep(0.002)

    def __enter__(self) -> BalanceWatcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


# ------------------------------------------------------------------ the race


@pytest.mark.e2e
def test_500_parallel_submits_hold_exactly_what_the_balance_covers(db: Database, web: str) -> None:
    key = funded_key(db, "racer", 100 * PRICE)
    org = org_id(db, "racer")
    client = Client(web, key)
    with BalanceWatcher(db, org) as watcher, ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client.post, range(500)))

    codes = Counter(status for status, _, _ in results)
    assert codes == {202: 100, 429: 400}, codes
    for status, body, _ in results:
        if status == 429:
            error = error_of(body)
            assert error["code"] == "insufficient_quota", error
            assert error["type"] == "rate_limit_error", error
        else:
            assert body["status"] == "QUEUED"
            assert body["cost"] == {"amount": PRICE, "currency": "CNY", "state": "held"}
    accepted = {body["id"] for status, body, _ in results if status == 202}
    assert len(accepted) == 100

    # Everything held, nothing overdrawn, and the ledger says the same as the balance row.
    assert balance_of(db, org) == ledger.Totals(0, 100 * PRICE)
    with db.session() as session:
        jobs = session.execute(sa.select(Job.id, Job.price, Job.status)).all()
        holds = session.execute(
            sa.select(LedgerEntry.job_id, LedgerEntry.amount).where(LedgerEntry.kind == "hold")
        ).all()
    assert {j.id for j in jobs} == accepted
    assert {(j.price, j.status) for j in jobs} == {(PRICE, "QUEUED")}
    assert sorted(h.job_id for h in holds) == sorted(accepted)
    assert {h.amount for h in holds} == {-PRICE}
    assert ledger_kinds(db) == {"topup": 1, "hold": 100}

    # While the race ran, the row never showed an overdraft or lost money.
    assert watcher.samples, "the watcher never read the balance"
    bad = [s for s in watcher.samples if s[0] < 0 or s[1] < 0 or sum(s) != 100 * PRICE]
    assert not bad, bad[:10]


@pytest.mark.e2e
@pytest.mark.env(ORG_MAX_ACTIVE_JOBS="3")
def test_parallel_submits_respect_the_per_org_cap(db: Database, web: str) -> None:
    key = funded_key(db, "busy")
    org = org_id(db, "busy")
    client = Client(web, key)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(client.post, range(40)))
    codes = Counter(status for status, _, _ in results)
    assert codes == {202: 3, 429: 37}, codes
    for status, body, headers in results:
        if status == 429:
            assert error_of(body)["code"] == "too_many_active_jobs", body
            assert int(headers["Retry-After"]) >= 1
    # Money was held for the three accepted jobs only.
    assert balance_of(db, org) == ledger.Totals(CREDIT - 3 * PRICE, 3 * PRICE)
    assert ledger_kinds(db, org) == {"topup": 1, "hold": 3}


# ------------------------------------------------------------------ rule 4 with the test client


def test_too_low_a_balance_is_429_insufficient_quota_and_holds_nothing(
    client: Any, db: Database
) -> None:
    key = funded_key(db, "poor", PRICE - 1)
    response = submit(client, key)
    assert response.status_code == 429
    error = error_of(response.get_json())
    assert error["code"] == "insufficient_quota" and error["type"] == "rate_limit_error"
    assert "balance" in error["message"]
    org = org_id(db, "poor")
    assert balance_of(db, org) == ledger.Totals(PRICE - 1, 0)
    assert ledger_kinds(db, org) == {"topup": 1}
    with db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    # A cheaper model the balance does cover is accepted.
    cheaper = submit(client, key, model="minimax/music-1.5")
    assert cheaper.status_code == 202, cheaper.get_json()
    assert cheaper.get_json()["cost"] == {"amount": 50, "currency": "CNY", "state": "held"}
    assert balance_of(db, org) == ledger.Totals(PRICE - 1 - 50, 50)


def test_an_orgs_own_model_is_free_to_it(client: Any, db: Database, api_key: str) -> None:
    maker_key = funded_key(db, "maker", 0)
    maker = org_id(db, "maker")
    set_model(db, "music-2.6", owner_org_id=maker)
    response = submit(client, maker_key)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["cost"] == {"amount": 0, "currency": "CNY", "state": "held"}
    assert balance_of(db, maker) == ledger.Totals(0, 0)
    assert ledger_kinds(db, maker) == Counter()
    # It ends (and settles) to nothing; usage charges nothing for it.
    finish(db, job["id"], "SUCCEEDED", 2000)
    done = client.get(f"{URL}/{job['id']}", headers=auth(maker_key)).get_json()
    assert done["cost"] == {"amount": 0, "currency": "CNY", "state": "captured"}
    assert balance_of(db, maker) == ledger.Totals(0, 0)
    today = dt.datetime.now(dt.UTC).date()
    span = f"from={today - dt.timedelta(days=1)}&to={today + dt.timedelta(days=1)}"
    usage = client.get(f"/v1/usage?{span}", headers=auth(maker_key))
    assert [(r["succeeded"], r["amount"]) for r in usage.get_json()["data"]] == [(1, 0)]
    # Everyone else still pays, and an unfunded stranger is refused.
    paid = submit(client, api_key)
    assert paid.get_json()["cost"]["amount"] == PRICE
    assert balance_of(db, org_id(db, "acme")) == ledger.Totals(CREDIT - PRICE, PRICE)
    stranger = funded_key(db, "stranger", 0)
    assert submit(client, stranger).status_code == 429


def test_min_balance_must_be_exceeded(client: Any, db: Database) -> None:
    set_model(db, "music-2.6", min_balance=500)
    key = funded_key(db, "edge", 500)
    org = org_id(db, "edge")
    refused = submit(client, key)
    assert refused.status_code == 429
    assert error_of(refused.get_json())["code"] == "insufficient_quota"
    assert balance_of(db, org) == ledger.Totals(500, 0)
    with db.transaction() as session:
        ledger.credit(session, org, "CNY", 1)
    assert submit(client, key).status_code == 202  # 501 > 500
    assert balance_of(db, org) == ledger.Totals(401, PRICE)
    # 401 covers the price but not the minimum.
    assert submit(client, key).status_code == 429
    assert balance_of(db, org) == ledger.Totals(401, PRICE)


# The statement's own SQL is what this test reads: unprepared, it goes as it is.
@pytest.mark.env(DATABASE_PREPARE="false")
def test_a_priced_submit_far_below_the_cap_is_one_statement_with_its_hold(
    app: Any, client: Any, db: Database
) -> None:
    """The job, the hold and its ledger entry go as one autocommit statement (its own
    transaction); a refused one writes none of them."""
    key = funded_key(db, "quick", PRICE + PRICE // 2)
    org = org_id(db, "quick")
    web_db = app.extensions["chorus"].db
    # Another org's submit first: the process then has the model in its catalog cache.
    assert submit(client, funded_key(db, "warm")).status_code == 202
    with statements_on(engine=web_db.engine, reader=web_db.reader) as statements:
        accepted = submit(client, key)
        refused = submit(client, key)
    assert accepted.status_code == 202, accepted.get_json()
    assert error_of(refused.get_json())["code"] == "insufficient_quota"
    assert statements["engine"] == [], statements
    # Per request: the key, then the one statement (the first also counts the org's jobs).
    writes = [sql for sql in statements["reader"] if "INSERT INTO jobs" in sql]
    assert len(writes) == 2 and len(statements["reader"]) == 5, statements
    assert all("UPDATE balances" in sql and "INSERT INTO ledger" in sql for sql in writes)
    with web_db.reader.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
    assert balance_of(db, org) == ledger.Totals(PRICE // 2, PRICE)
    assert ledger_kinds(db, org) == {"topup": 1, "hold": 1}
    with db.session() as session:
        jobs = session.scalars(sa.select(Job.id).where(Job.org_id == org)).all()
    assert jobs == [accepted.get_json()["id"]]


@pytest.mark.env(ORG_MAX_ACTIVE_JOBS="3")
def test_near_the_cap_a_submit_takes_the_transaction(app: Any, client: Any, db: Database) -> None:
    """A small cap is always counted exactly, under the org's lock: in a transaction."""
    key = funded_key(db, "careful")
    web_db = app.extensions["chorus"].db
    with statements_on(engine=web_db.engine, reader=web_db.reader) as statements:
        assert submit(client, key).status_code == 202
    assert not any("INSERT INTO jobs" in sql for sql in statements["reader"]), statements
    assert any("INSERT INTO jobs" in sql for sql in statements["engine"]), statements
    assert any("UPDATE balances" in sql for sql in statements["engine"]), statements


@pytest.mark.env(ORG_MAX_ACTIVE_JOBS="3")
def test_the_fourth_active_job_is_429_and_holds_nothing(
    client: Any, db: Database, api_key: str, other_key: str
) -> None:
    org = org_id(db, "acme")
    ids = []
    for _ in range(3):
        response = submit(client, api_key)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    fourth = submit(client, api_key)
    assert fourth.status_code == 429
    error = error_of(fourth.get_json())
    assert error["code"] == "too_many_active_jobs" and error["type"] == "rate_limit_error"
    assert "3" in error["message"]
    assert int(fourth.headers["Retry-After"]) >= 1
    assert balance_of(db, org) == ledger.Totals(CREDIT - 3 * PRICE, 3 * PRICE)
    assert ledger_kinds(db, org) == {"topup": 1, "hold": 3}
    # The cap is per org.
    assert submit(client, other_key).status_code == 202
    # A job ending frees a place.
    finish(db, ids[0], "FAILED")
    assert submit(client, api_key).status_code == 202
    assert submit(client, api_key).status_code == 429
    assert balance_of(db, org) == ledger.Totals(CREDIT - 3 * PRICE, 3 * PRICE)
    assert ledger_kinds(db, org) == {"topup": 1, "hold": 4, "release": 1}


def test_the_cap_holds_across_currencies(db: Database, api_key: str) -> None:
    from app.jobs.errors import TooManyActive
    from app.jobs.intake import create_job

    set_model(db, "minimax/music-1.5", currency="USD")
    org = org_id(db, "acme")
    with db.transaction() as session:
        ledger.credit(session, org, "USD", 10_000)
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()
    with db.session() as session:
        key = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == key_hash))
    assert key is not None
    body = {**GOOD_BODY}

    # Submit A (CNY) is accepted and not yet committed; submit B (USD) comes in meanwhile.
    first = db.session()
    first.begin()
    create_job(first, key, body, deadline_seconds=60, max_active_jobs=1)
    outcome: list[object] = []

    def second() -> None:
        try:
            with db.transaction() as session:
                create_job(
                    session,
                    key,
                    {**body, "model": "minimax/music-1.5"},
                    deadline_seconds=60,
                    max_active_jobs=1,
                )
            outcome.append("accepted")
        except TooManyActive:
            outcome.append("too many active")

    commit_once_blocked(db, first, second)
    with db.session() as session:
        active = session.scalar(sa.select(sa.func.count()).select_from(Job))
    assert (outcome, active) == (["too many active"], 1)


# ------------------------------------------------------------------ GET /v1/models


def test_models_lists_published_models_openai_style(
    client: Any, db: Database, api_key: str, other_key: str, catalog: dict[str, Any]
) -> None:
    set_model(db, "music-1.5", status="unpublished")
    set_model(db, "music-2.0", owner_org_id=org_id(db, "acme"))
    response = client.get("/v1/models", headers=auth(api_key))
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "list"
    listed = {m["id"]: m for m in body["data"]}
    published = {m["name"] for m in catalog["models"]} - {"music-1.5"}
    assert set(listed) == published
    assert [m["id"] for m in body["data"]] == sorted(listed)
    for spec in catalog["models"]:
        if spec["name"] not in listed:
            continue
        model = listed[spec["name"]]
        assert {"id", "object", "categories", "price", "min_balance", "limits"} <= set(model)
        assert model["object"] == "model"
        assert [c["id"] for c in model["categories"]] == [r["category"] for r in spec["routes"]]
        assert model["min_balance"] == spec["min_balance"]
        assert model["limits"]["prompt"] == spec["limits"]["prompt"]
        assert model["limits"]["reference_audio"] == spec["limits"]["reference_audio"]
        expected = 0 if spec["name"] == "music-2.0" else spec["price"]
        assert model["price"] == {"amount": expected, "currency": spec["currency"]}
    assert listed["music-2.6"]["price"] == {"amount": PRICE, "currency": "CNY"}
    # Another org pays for acme's model.
    theirs = {
        m["id"]: m for m in client.get("/v1/models", headers=auth(other_key)).get_json()["data"]
    }
    assert theirs["music-2.0"]["price"] == {"amount": 100, "currency": "CNY"}
    assert "music-1.5" not in theirs
    # No key, no list.
    assert client.get("/v1/models").status_code == 403


# ------------------------------------------------------------------ GET /v1/balance


def test_balance_shows_available_and_held_as_jobs_move(
    client: Any, db: Database, api_key: str, other_key: str
) -> None:
    def mine() -> dict[str, Any]:
        response = client.get("/v1/balance", headers=auth(api_key))
        assert response.status_code == 200
        body: dict[str, Any] = response.get_json()
        assert body["object"] == "list"
        return body

    assert mine()["data"] == [
        {"object": "balance", "currency": "CNY", "available": CREDIT, "held": 0}
    ]
    ids = [submit(client, api_key).get_json()["id"] for _ in range(3)]
    assert mine()["data"][0] == {
        "object": "balance",
        "currency": "CNY",
        "available": CREDIT - 3 * PRICE,
        "held": 3 * PRICE,
    }
    finish(db, ids[0], "SUCCEEDED", 2000)
    finish(db, ids[1], "FAILED")
    (row,) = mine()["data"]
    assert (row["available"], row["held"]) == (CREDIT - 2 * PRICE, PRICE)
    finish(db, ids[2], "SUCCEEDED", 2000)
    (row,) = mine()["data"]
    assert (row["available"], row["held"]) == (CREDIT - 2 * PRICE, 0)
    # Each org sees only its own money.
    (theirs,) = client.get("/v1/balance", headers=auth(other_key)).get_json()["data"]
    assert (theirs["available"], theirs["held"]) == (CREDIT, 0)
    assert client.get("/v1/balance").status_code == 403
    assert balance_of(db, org_id(db, "acme")) == ledger.Totals(CREDIT - 2 * PRICE, 0)


# ------------------------------------------------------------------ GET /v1/usage


def test_usage_by_model_and_day(client: Any, db: Database, api_key: str, other_key: str) -> None:
    two_six = [submit(client, api_key).get_json()["id"] for _ in range(3)]
    one_five = submit(client, api_key, model="minimax/music-1.5").get_json()["id"]
    submit(client, other_key)  # another org's job is never counted
    finish(db, two_six[0], "SUCCEEDED", 2500)
    finish(db, two_six[1], "FAILED")
    finish(db, two_six[2], "SUCCEEDED", 3000)
    finish(db, one_five, "SUCCEEDED", 1500)
    # Fixed times, so that a run across midnight reads the same: all of them at noon on one
    # day (UTC), but one the day before.
    noon = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)
    with db.transaction() as session:
        session.execute(sa.update(Job).values(created_at=noon))
        session.execute(
            sa.update(Job)
            .where(Job.id == two_six[2])
            .values(created_at=noon - dt.timedelta(days=1))
        )
    today = noon.date()
    yesterday = today - dt.timedelta(days=1)

    def usage(start: dt.date, end: dt.date) -> dict[str, Any]:
        response = client.get(
            f"/v1/usage?from={start.isoformat()}&to={end.isoformat()}", headers=auth(api_key)
        )
        assert response.status_code == 200, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    body = usage(yesterday, today)
    assert body["object"] == "list"
    assert (body["from"], body["to"]) == (yesterday.isoformat(), today.isoformat())
    assert body["data"] == [
        {
            "date": yesterday.isoformat(),
            "model": "music-2.6",
            "jobs": 1,
            "succeeded": 1,
            "audio_seconds": 3.0,
            "amount": PRICE,
            "currency": "CNY",
        },
        {
            "date": today.isoformat(),
            "model": "minimax/music-1.5",
            "jobs": 1,
            "succeeded": 1,
            "audio_seconds": 1.5,
            "amount": 50,
            "currency": "CNY",
        },
        {
            "date": today.isoformat(),
            "model": "music-2.6",
            "jobs": 2,
            "succeeded": 1,
            "audio_seconds": 2.5,
            "amount": PRICE,
            "currency": "CNY",
        },
    ]
    # What usage says was charged is what the ledger captured.
    with db.session() as session:
        captured = session.scalar(
            sa.select(sa.func.sum(LedgerEntry.job_amount)).where(
                LedgerEntry.kind == "capture", LedgerEntry.org_id == org_id(db, "acme")
            )
        )
    assert captured == sum(row["amount"] for row in body["data"])
    # Both days are included, and only them.
    assert [r["date"] for r in usage(today, today)["data"]] == [today.isoformat()] * 2
    assert [r["date"] for r in usage(yesterday, yesterday)["data"]] == [yesterday.isoformat()]
    assert usage(today + dt.timedelta(days=1), today + dt.timedelta(days=5))["data"] == []


def test_usage_days_are_utc_days_whatever_the_database_timezone(
    client: Any, db: Database, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq reads PGTZ when it connects: as if the server's own timezone were Shanghai's.
    monkeypatch.setenv("PGTZ", "Asia/Shanghai")
    job_id = submit(client, api_key).get_json()["id"]
    finish(db, job_id, "SUCCEEDED", 2000)
    # 20:00 UTC on 1 January is 04:00 on 2 January in Shanghai.
    evening = dt.datetime(2024, 1, 1, 20, 0, tzinfo=dt.UTC)
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(created_at=evening))
    response = client.get("/v1/usage?from=2024-01-01&to=2024-01-01", headers=auth(api_key))
    assert response.status_code == 200
    assert [row["date"] for row in response.get_json()["data"]] == ["2024-01-01"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("from=2024-13-01&to=2024-12-31", "from"),
        ("from=yesterday&to=2024-12-31", "from"),
        ("from=2024-01-01&to=2024-02-30", "to"),
        ("from=2024-01-01&to=soon", "to"),
        ("to=2024-01-01", "from"),
        ("from=2024-01-01", "to"),
        ("from=2024-02-01&to=2024-01-31", "to"),  # to before from
        ("from=2020-01-01&to=2024-01-01", "to"),  # more than a year at once
    ],
)
def test_usage_bad_dates_are_400_naming_the_param(
    client: Any, api_key: str, query: str, param: str
) -> None:
    response = client.get(f"/v1/usage?{query}", headers=auth(api_key))
    assert response.status_code == 400, response.get_json()
    error = error_of(response.get_json())
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]


# ------------------------------------------------------------------ API keys


def dump_database(db: Database) -> str:
    """Every value of every row of every table, as text."""
    with db.engine.connect() as conn:
        tables = (
            conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
            )
            .scalars()
            .all()
        )
        assert {"api_keys", "jobs", "ledger", "balances", "orgs"} <= set(tables)
        parts = []
        for table in tables:
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608
                parts.append(f"{table}: " + " | ".join(str(v) for v in row))
    return "\n".join(parts)


def secret_parts(key: str) -> list[str]:
    """The key, and its part beyond the display prefix (a leak of that is a leak too)."""
    return [key, key[12:]]


def test_keys_are_stored_only_as_a_hash_and_a_display_prefix(
    client: Any, db: Database, api_key: str, other_key: str
) -> None:
    # Leave a trace everywhere a key could end up: a job, a hold, usage.
    job_id = submit(client, api_key).get_json()["id"]
    finish(db, job_id, "SUCCEEDED", 2000)
    client.get("/v1/usage?from=2000-01-01&to=2000-01-02", headers=auth(api_key))
    with db.session() as session:
        rows = {r.key_hash: r for r in session.scalars(sa.select(ApiKey))}
    for key in (api_key, other_key):
        row = rows[hashlib.sha256(key.encode()).hexdigest()]
        assert key.startswith(row.display_prefix) and len(row.display_prefix) <= 12
    dump = dump_database(db)
    assert job_id in dump  # the dump does see the rows
    for key in (api_key, other_key):
        for part in secret_parts(key):
            assert part not in dump


@pytest.mark.e2e
def test_a_revoked_key_is_refused_on_the_very_next_request(
    db: Database, web: str, api_key: str, other_key: str, env: dict[str, str]
) -> None:
    session = requests.Session()

    def status(key: str) -> int:
        return session.get(f"{web}/v1/balance", headers=auth(key), timeout=60).status_code

    # Warm both gunicorn processes (and any cache they might keep) with the key.
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda _: status(api_key), range(40))) == {200}
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()
    with db.session() as db_session:
        key_id = db_session.scalar(sa.select(ApiKey.id).where(ApiKey.key_hash == key_hash))
    subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", str(key_id)],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The very next request, and every one after, from either process.
    assert status(api_key) == 403
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda _: status(api_key), range(40))) == {403}
    body = requests.post(f"{web}{URL}", json=GOOD_BODY, headers=auth(api_key), timeout=60)
    assert body.status_code == 403
    assert error_of(body.json())["code"] == "invalid_api_key"
    assert status(other_key) == 200


# ------------------------------------------------------------------ the secret goes nowhere


class RedisRecorder:
    """Every command sent to one Redis database while it runs (MONITOR), as text."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        self.commands: list[str] = []
        self.sentinel = f"chorus-test-stop-{uuid.uuid4().hex}"
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.started = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:
            self.started.set()
            while True:
                command = monitor.next_command()
                text = str(command.get("command", ""))
                if self.sentinel in text:
                    return
                if command.get("db") == self.db:
                    self.commands.append(text)

    def __enter__(self) -> RedisRecorder:
        self.thread.start()
        assert self.started.wait(30)
        time.sleep(0.2)  # MONITOR is on once the server has answered it
        return self

    def __exit__(self, *_: object) -> None:
        self.client.echo(self.sentinel)
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the Redis monitor did not stop"


BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def decoded(text: str) -> Iterator[str]:
    """Base64 runs in ``text``, decoded: Celery message bodies travel base64-encoded."""
    for run in BASE64_RUN.findall(text):
        for candidate in (run, run + "=" * (-len(run) % 4)):
            try:
                yield base64.b64decode(candidate, validate=True).decode("utf-8", "replace")
                break
            except (binascii.Error, ValueError):
                continue


def redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url)
    parts: list[str] = []
    for key in client.scan_iter(count=500):
        kind_raw: Any = client.type(key)
        kind = kind_raw.decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        parts.append(f"{key!r}: {value!r}")
    client.close()
    return "\n".join(parts)


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.env(LOG_LEVEL="DEBUG")
def test_the_secret_never_reaches_logs_the_database_or_the_broker(
    db: Database, sim: str, procs: Processes, redis_url: str
) -> None:
    key = funded_key(db, "careful")
    with RedisRecorder(redis_url) as recorder:
        base = start_web(procs)
        procs.worker()
        procs.scheduler()
        session = requests.Session()
        created = session.post(f"{base}{URL}", json=GOOD_BODY, headers=auth(key), timeout=60)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = session.get(
                f"{base}{URL}/{job_id}", headers=auth(key), timeout=60
            ).json()
            return job if job["status"] in {"SUCCEEDED", "FAILED"} else None

        job = wait_for(finished, 180, interval=0.5, message="the job to end")
        assert job["status"] == "SUCCEEDED", job
        assert job["cost"] == {"amount": PRICE, "currency": "CNY", "state": "captured"}
        for path in ("/v1/balance", "/v1/models", "/v1/usage?from=2000-01-01&to=2000-01-02"):
            assert session.get(f"{base}{path}", headers=auth(key), timeout=60).ok
        # A refused request is logged too.
        assert (
            session.get(f"{base}{URL}/luid_nope", headers=auth(key), timeout=60).status_code == 404
        )
        broker_now = redis_dump(redis_url)
    procs.stop_all()  # flush and close every log

    web_log, worker_log, scheduler_log = (
        procs.log("web"),
        procs.log("worker"),
        procs.log("scheduler"),
    )
    # The logs and the recording are not empty: they saw this job.
    assert f"POST {URL}" in web_log and f"GET {URL}/{job_id}" in web_log
    assert "chorus.submit_jobs" in worker_log or job_id in worker_log, worker_log[-3000:]
    traffic = "\n".join(recorder.commands)
    traffic_decoded = "\n".join(decoded(traffic))
    assert job_id in traffic_decoded, "no Celery message body about the job was seen"

    places = {
        "web log": web_log,
        "worker log": worker_log,
        "scheduler log": scheduler_log,
        "redis traffic": traffic,
        "redis traffic (base64-decoded)": traffic_decoded,
        "redis contents": broker_now + "\n" + "\n".join(decoded(broker_now)),
        "database": dump_database(db),
    }
    for place, text in places.items():
        for part in secret_parts(key):
            assert part not in text, f"the API key leaked into the {place}"


def test_the_cap_skips_counting_only_far_below_it(db: Database, catalog: None) -> None:
    """A recent count far below the cap spares the COUNT; near it every submit is counted."""
    from app.cache import TTLCache
    from app.jobs.errors import TooManyActive
    from app.jobs.intake import check_active_cap

    org = org_id(db, "acme")
    counts: list[str] = []

    def count_statements(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "count(" in statement.lower():
            counts.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count_statements)
    try:
        recent: TTLCache[int] = TTLCache(ttl=60)
        with db.session() as session:
            check_active_cap(session, org, 10_000, recent)  # loads the count: 0
            check_active_cap(session, org, 10_000, recent)  # far below: not counted
            assert len(counts) == 1
            # A small cap is always counted, whatever the cache says: so near it, once
            # freely and once more under the org's lock.
            check_active_cap(session, org, 3, recent)
            assert len(counts) == 3
            # A stale count near the cap does not excuse the submit from the exact count.
            stale: TTLCache[int] = TTLCache(ttl=60)
            stale.get(org, lambda: 0)
            model_id = session.scalar(sa.select(Model.id).limit(1))
            now = dt.datetime.now(dt.UTC)
            for n in range(4):
                session.add(
                    Job(
                        id=f"luid_cap{n}",
                        org_id=org,
                        model_id=model_id,
                        model_name="m",
                        catelogid="music_gen",
                        category_id="music_gen",
                        deadline_at=now,
                    )
                )
            session.flush()
            with pytest.raises(TooManyActive):
                check_active_cap(session, org, 3, stale)
            session.rollback()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count_statements)

"""Retention: old finished jobs become tombstones, their audio goes, their money stays."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database, utcnow
from app.jobs.models import Job
from app.jobs.retention import purge_expired
from app.jobs.usage import usage
from app.money import ledger
from app.money.models import LedgerEntry
from app.storage import AudioStorage
from tests.audio import WAV
from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
OLD = dt.timedelta(days=40)


@pytest.fixture(params=["local", "s3"])
def env(env: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        env.update(s3.env(s3.new_bucket()))
    return env


@pytest.fixture
def storage(app: Any) -> AudioStorage:
    backend: AudioStorage = app.extensions["chorus"].storage
    return backend


def make_job(
    client: Any,
    db: Database,
    storage: AudioStorage,
    key: str,
    status: str,
    age: dt.timedelta,
    **extra: Any,
) -> str:
    """A job through the API (price held), ended as the engine would end it, then aged."""
    # A public address by number: a name would need DNS, which a test machine may not have.
    body = {**GOOD_BODY, "metadata": {"order": "42"}, "callback_url": "https://93.184.215.14/h"}
    response = client.post(URL, json={**body, **extra}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    values: dict[str, Any] = {"status": status, "created_at": utcnow() - age}
    if status == "SUCCEEDED":
        audio_key, info = storage.store_bytes(WAV, f"{job_id}-a", max_bytes=10**7)
        values.update(
            audio_key=audio_key,
            audio_format=info.format,
            audio_size=info.size,
            audio_duration_ms=info.duration_ms,
        )
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        if status in {"SUCCEEDED", "FAILED", "CANCELLED"}:
            ledger.settle(session, job_id, capture=status == "SUCCEEDED")
    return job_id


def row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def purge(db: Database, storage: AudioStorage, **kwargs: Any) -> int:
    options: dict[str, Any] = {"days": 30, "batch": 100, **kwargs}
    return purge_expired(db, storage, **options)


def test_old_finished_jobs_become_tombstones(
    client: Any, db: Database, storage: AudioStorage, api_key: str
) -> None:
    old_ok = make_job(client, db, storage, api_key, "SUCCEEDED", OLD)
    old_failed = make_job(client, db, storage, api_key, "FAILED", OLD)
    old_running = make_job(client, db, storage, api_key, "RUNNING", OLD)
    recent = make_job(client, db, storage, api_key, "SUCCEEDED", dt.timedelta(days=29))
    old_key = row(db, old_ok).audio_key
    assert old_key is not None and storage.exists(old_key)
    link = client.get(f"{URL}/{old_ok}", headers=auth(api_key)).get_json()["audio"]

    assert purge(db, storage, batch=1) == 2  # several batches of one

    tomb = row(db, old_ok)
    assert tomb.purged_at is not None
    assert tomb.request == {} and tomb.callback_url is None and tomb.client_metadata is None
    assert tomb.audio_key is None and tomb.lease_token is None
    # The facts of what was made and charged stay.
    assert (tomb.status, tomb.price, tomb.audio_size) == ("SUCCEEDED", 100, len(WAV))
    assert not storage.exists(old_key)
    assert row(db, old_failed).purged_at is not None
    assert row(db, old_running).purged_at is None  # never an active job
    assert row(db, recent).purged_at is None and storage.exists(row(db, recent).audio_key or "")

    job = client.get(f"{URL}/{old_ok}", headers=auth(api_key)).get_json()
    assert job["status"] == "SUCCEEDED" and job["purged_at"] == int(tomb.purged_at.timestamp())
    assert job["audio"] is None and job["urls"]["audio"] is None
    assert job["urls"]["content"] is None and job["metadata"] == {}
    assert job["audio_info"]["size"] == len(WAV)
    assert job["cost"] == {"amount": 100, "currency": "CNY", "state": "captured"}
    content = client.get(f"{URL}/{old_ok}/content", headers=auth(api_key))
    assert content.status_code == 410
    assert content.get_json()["error"]["code"] == "audio_purged"
    assert client.get(link.replace("http://localhost", "")).status_code == 404

    assert purge(db, storage) == 0  # a second run finds nothing


def test_money_history_survives_a_purge(
    client: Any, db: Database, storage: AudioStorage, api_key: str
) -> None:
    ids = [
        make_job(client, db, storage, api_key, status, OLD)
        for status in ("SUCCEEDED", "SUCCEEDED", "FAILED", "CANCELLED")
    ]
    with db.session() as session:
        org_id = row(db, ids[0]).org_id
        entries_before = session.scalars(sa.select(LedgerEntry).order_by(LedgerEntry.id)).all()
        before = ledger.balance(session, org_id, "CNY")
        day = (utcnow() - OLD).date()
        usage_before = usage(session, org_id, day, day)

    assert purge(db, storage) == 4

    with db.session() as session:
        entries_after = session.scalars(sa.select(LedgerEntry).order_by(LedgerEntry.id)).all()
        assert [(e.id, e.kind, e.amount, e.job_id) for e in entries_after] == [
            (e.id, e.kind, e.amount, e.job_id) for e in entries_before
        ]
        assert ledger.balance(session, org_id, "CNY") == before
        assert ledger.recompute(session, org_id, "CNY") == before
        assert usage(session, org_id, day, day) == usage_before
        assert usage_before[0]["amount"] == 200 and usage_before[0]["succeeded"] == 2


def test_zero_days_keeps_everything(
    client: Any, db: Database, storage: AudioStorage, api_key: str
) -> None:
    job_id = make_job(client, db, storage, api_key, "SUCCEEDED", dt.timedelta(days=4000))
    assert purge(db, storage, days=0) == 0
    assert row(db, job_id).purged_at is None


def test_concurrent_purgers_take_disjoint_rows(
    client: Any, db: Database, storage: AudioStorage, api_key: str
) -> None:
    ids = [make_job(client, db, storage, api_key, "SUCCEEDED", OLD) for _ in range(12)]
    counts: list[int] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        counts.append(purge(db, storage, batch=2))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(counts) == 12  # each job purged exactly once, whoever did it
    assert all(row(db, i).purged_at is not None for i in ids)


def test_a_purge_that_died_is_finished_by_the_next(
    client: Any, db: Database, storage: AudioStorage, api_key: str
) -> None:
    held = make_job(client, db, storage, api_key, "SUCCEEDED", OLD)
    lapsed = make_job(client, db, storage, api_key, "SUCCEEDED", OLD)
    lapsed_key = row(db, lapsed).audio_key or ""
    now = utcnow()
    with db.transaction() as session:
        # One purger still holds ``held``; another died after deleting ``lapsed``'s file.
        session.execute(
            sa.update(Job)
            .where(Job.id == held)
            .values(lease_token="other", lease_until=now + dt.timedelta(minutes=5))
        )
        session.execute(
            sa.update(Job)
            .where(Job.id == lapsed)
            .values(lease_token="dead", lease_until=now - dt.timedelta(seconds=1))
        )
    storage.delete(lapsed_key)

    assert purge(db, storage) == 1
    assert row(db, lapsed).purged_at is not None and row(db, lapsed).audio_key is None
    assert row(db, held).purged_at is None


def test_a_storage_failure_marks_nothing(
    client: Any, db: Database, storage: AudioStorage, api_key: str, monkeypatch: Any
) -> None:
    job_id = make_job(client, db, storage, api_key, "SUCCEEDED", OLD)
    key = row(db, job_id).audio_key or ""

    def broken(keys: Any) -> None:
        raise OSError("storage is down")

    monkeypatch.setattr(storage, "delete_many", broken)
    with pytest.raises(OSError, match="down"):
        purge(db, storage)
    monkeypatch.undo()
    assert row(db, job_id).purged_at is None and storage.exists(key)

    # Once its lease lapses, the next run purges it.
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(lease_until=utcnow() - OLD))
    assert purge(db, storage) == 1
    assert not storage.exists(key)

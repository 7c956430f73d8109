"""End to end on S3: real worker, sync worker and scheduler processes, the simulator, and moto.

The workers store the audio in a bucket of the S3 stand-in over HTTP; the API (in-process)
streams it back through ``/content`` and the signed link; the scheduler's retention task purges it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.db import Database, utcnow
from app.jobs.models import Job
from app.money import ledger
from app.money.models import LedgerEntry
from tests.conftest import Processes, auth, wait_for
from tests.e2e.support import read, submit
from tests.unit.storage.conftest import S3StandIn

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
PREFIX = "tracks"


@pytest.fixture
def bucket(s3: S3StandIn) -> str:
    return s3.new_bucket()


@pytest.fixture
def env(env: dict[str, str], s3: S3StandIn, bucket: str) -> dict[str, str]:
    env.update(s3.env(bucket, prefix=PREFIX))
    # The scheduler sends the retention task every second, so the test sees it within moments.
    env.update(RETENTION_DAYS="30", RETENTION_INTERVAL="1")
    return env


def test_jobs_store_to_s3_and_download_then_retention_purges(
    client: Any,
    db: Database,
    api_key: str,
    sim: str,
    procs: Processes,
    s3: S3StandIn,
    bucket: str,
    settings: Any,
) -> None:
    procs.worker()
    procs.sync_worker()
    procs.scheduler()
    # music-2.6 goes to the AIMLAPI simulator (a URL to download); music-2.0 to MiniMax's
    # (audio inline as hex): both paths into the bucket.
    url_job = submit(client, api_key)
    hex_job = submit(client, api_key, model="music-2.0", output_format="hex")

    def finished() -> dict[str, dict[str, Any]] | None:
        jobs = {i: read(client, api_key, i) for i in (url_job, hex_job)}
        return (
            jobs if all(j["status"] not in {"QUEUED", "RUNNING"} for j in jobs.values()) else None
        )

    jobs = wait_for(finished, 60, interval=0.3, message="both jobs to end")
    assert [j["status"] for j in jobs.values()] == ["SUCCEEDED", "SUCCEEDED"], jobs
    assert jobs[hex_job]["upstream"]["provider"] == "minimax"

    rows = {i: db_row(db, i) for i in jobs}
    keys = sorted(f"{PREFIX}/{r.audio_key}" for r in rows.values())
    assert s3.keys(bucket) == keys
    assert not settings.storage_dir.exists()  # nothing went to the local folder
    requests.post(f"{sim}/_sim/reset", timeout=5)  # Chorus's copy needs no upstream

    for job_id, job in jobs.items():
        stored = s3.client.get_object(Bucket=bucket, Key=f"{PREFIX}/{rows[job_id].audio_key}")
        data = stored["Body"].read()
        assert data[:4] == b"RIFF" and len(data) == job["audio_info"]["size"]
        content = client.get(job["urls"]["content"], headers=auth(api_key))
        assert content.status_code == 200 and content.data == data
        assert content.mimetype == "audio/wav"
        ranged = client.get(
            job["urls"]["content"], headers={**auth(api_key), "Range": "bytes=0-43"}
        )
        assert ranged.status_code == 206 and ranged.data == data[:44]
        linked = client.get(job["urls"]["audio"].replace("http://localhost", ""))
        assert linked.status_code == 200 and linked.data == data
        if job_id == hex_job:
            assert bytes.fromhex(job["audio"]) == data
        else:
            assert job["audio"] == job["urls"]["audio"]

    # Retention: move the jobs 40 days back; the next purge takes them.
    with db.transaction() as session:
        org_id = rows[url_job].org_id
        balance = ledger.balance(session, org_id, "CNY")
        entries = session.scalar(sa.select(sa.func.count()).select_from(LedgerEntry))
        session.execute(
            sa.update(Job)
            .where(Job.id.in_(list(jobs)))
            .values(created_at=utcnow() - dt.timedelta(days=40))
        )

    wait_for(lambda: s3.keys(bucket) == [], 30, interval=0.3, message="the bucket to empty")
    wait_for(
        lambda: all(db_row(db, i).purged_at is not None for i in jobs),
        10,
        message="the jobs to be marked purged",
    )
    for job_id, job in jobs.items():
        after = read(client, api_key, job_id)
        assert after["audio"] is None and after["purged_at"] is not None
        assert after["status"] == "SUCCEEDED"
        assert client.get(job["urls"]["content"], headers=auth(api_key)).status_code == 410
        assert client.get(job["urls"]["audio"].replace("http://localhost", "")).status_code == 404
    with db.session() as session:
        assert ledger.balance(session, org_id, "CNY") == balance
        assert ledger.recompute(session, org_id, "CNY") == balance
        assert session.scalar(sa.select(sa.func.count()).select_from(LedgerEntry)) == entries
    assert "retention: purged 2 job(s)" in procs.log("worker")


def db_row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job

"""Chorus behind PgBouncer in transaction mode, as docker-compose.yml runs it.

A real pgbouncer (Debian's; `make test` installs it) with the shipped settings
(deploy/pgbouncer/pgbouncer.ini) stands in front of the test database with a pool of three
server connections, which the API, a worker, its pool processes and the scheduler all share:
each transaction may run on another server connection than the last. DATABASE_URL is the
pooler's, DATABASE_DIRECT_URL the server's (the scheduler's lock and LISTEN, migrations).
A job goes through every step (submit, polls, audio copy, capture), a cancel releases its
money, and the doorbell rings through the pooler: nothing Chorus keeps in a session breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa

from app.db import Database
from config import Settings
from tests.conftest import CREDIT, Processes, auth, wait_for
from tests.e2e.support import URL, read, submit, wait_terminal
from tests.e2e.test_money_faults import PRICE, assert_balance, assert_settled_once, org_id
from tests.pgbouncer import PgBouncer, binary

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]


@pytest.fixture(scope="module")
def pgbouncer(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    if binary() is None:
        pytest.skip("pgbouncer is not installed (`make test` installs Debian's as root)")
    server = PgBouncer(database_url, tmp_path_factory.mktemp("pgbouncer") / "run")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(env: dict[str, str], database_url: str, pgbouncer: PgBouncer) -> dict[str, str]:
    """Every process of the test, the in-process API included, on the pooler."""
    return {**env, "DATABASE_URL": pgbouncer.url(), "DATABASE_DIRECT_URL": database_url}


def transactions(pgbouncer: PgBouncer) -> int:
    """Transactions pgbouncer has carried to the test database so far."""
    database = pgbouncer.server.database
    rows = [r for r in pgbouncer.admin("SHOW STATS") if r["database"] == database]
    return sum(int(str(r["total_xact_count"])) for r in rows)


def backend_pid(cursor: Any) -> int:
    cursor.execute("SELECT pg_backend_pid()")
    return int(cursor.fetchone()[0])


def test_the_pooler_is_in_transaction_mode_and_chorus_prepares_nothing(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    config = {r["key"]: r["value"] for r in pgbouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    # DATABASE_DIRECT_URL set: the API's hot statements are not PREPAREd on the server.
    assert settings.database_prepare is False
    assert settings.database_url is not None and str(pgbouncer.port) in settings.database_url


def test_sessions_stay_in_utc_on_server_connections_shared_with_other_zones(
    pgbouncer: PgBouncer, settings: Settings
) -> None:
    # Another client of the same pool, in another time zone, on the same server connections.
    other = psycopg2.connect(pgbouncer.url().replace("postgresql+psycopg2", "postgresql"))
    other.autocommit = True
    db = Database(settings)
    try:
        with other.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Pacific/Chatham'")
        seen_by_other, seen_by_chorus = set(), set()
        for _ in range(5):
            with other.cursor() as cursor:
                seen_by_other.add(backend_pid(cursor))
                cursor.execute("SHOW TimeZone")
                assert cursor.fetchone()[0] == "Pacific/Chatham"
            for engine in (db.engine, db.reader):
                with engine.connect() as conn:
                    seen_by_chorus.add(conn.scalar(sa.text("SELECT pg_backend_pid()")))
                    assert conn.scalar(sa.text("SHOW TimeZone")) == "UTC"
        # The check means something: some server connection served both clients.
        assert seen_by_other & seen_by_chorus
    finally:
        other.close()
        db.dispose()


@pytest.mark.timeout(180)
# Only the doorbell (NOTIFY through the pooler, LISTEN on the direct connection) can wake the
# scheduler for a new job before this.
@pytest.mark.env(SCHEDULER_MAX_SLEEP="60")
def test_a_job_succeeds_and_a_cancel_releases_its_money_through_the_pooler(
    client: Any,
    db: Database,
    api_key: str,
    sim: str,
    procs: Processes,
    pgbouncer: PgBouncer,
) -> None:
    procs.worker()
    procs.scheduler()
    wait_for(lambda: "scheduler: leading" in procs.log("scheduler"), 60, message="a leader")
    before = transactions(pgbouncer)

    job_id = submit(client, api_key, audio_setting={"format": "wav"})
    slow = submit(client, api_key, "Slow ballad [sim:latency=30]")
    wait_for(lambda: read(client, api_key, slow)["status"] == "RUNNING", 30, message="running")
    cancelled = client.post(f"{URL}/{slow}/cancel", headers=auth(api_key))
    assert cancelled.status_code == 200, cancelled.get_json()
    assert cancelled.get_json()["cost"]["state"] == "released"

    jobs = wait_terminal(client, api_key, [job_id, slow], timeout=40)
    job = jobs[job_id]
    assert job["status"] == "SUCCEEDED", job
    audio = client.get(job["audio"].replace("http://localhost", ""))
    assert audio.status_code == 200 and audio.data[:4] == b"RIFF"
    assert jobs[slow]["status"] == "CANCELLED"
    # Held, then captured once for the song; held, then released for the cancelled one.
    assert_settled_once(db, jobs)
    assert_balance(db, org_id(db, "acme"), CREDIT - PRICE)

    # It all went through the pooler, and nothing there or in the processes complained.
    assert transactions(pgbouncer) - before > 20
    for name in ("worker", "scheduler"):
        log = procs.log(name)
        assert "Traceback" not in log and "prepared statement" not in log, log[-3000:]
    assert "ERROR" not in pgbouncer.log(), pgbouncer.log()[-3000:]

"""Where a job stands, as clients read it: ``queue_position`` while QUEUED, ``progress`` and
``eta`` while RUNNING (real Postgres, the API in-process; states set on the rows directly)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app.catalog.models import Model
from app.db import Database, utcnow
from app.jobs.progress import _POSITION, POSITION_CAP, RUNNING_CAP
from tests.api.test_list_cancel import set_row
from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"


def submit(client: Any, key: str, model: str = "music-2.6") -> str:
    response = client.post(URL, json={**GOOD_BODY, "model": model}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "QUEUED" and body["progress"] is None and body["eta"] is None
    job_id: str = body["id"]
    return job_id


def read(client: Any, key: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{URL}/{job_id}", headers=auth(key))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def positions(client: Any, key: str, ids: list[str]) -> list[int | None]:
    return [read(client, key, job_id)["queue_position"] for job_id in ids]


def test_queue_position_counts_the_queued_jobs_ahead_on_the_same_model_or_account(
    client: Any, db: Database, api_key: str, other_key: str
) -> None:
    a, b, c = (submit(client, api_key) for _ in range(3))
    other_model = submit(client, api_key, model="music-1.5")
    # Another org's job waits in the same line: the line is the upstream's, not the org's.
    theirs = submit(client, other_key)
    assert positions(client, api_key, [a, b, c, other_model]) == [0, 1, 2, 0]
    assert read(client, other_key, theirs)["queue_position"] == 3

    # The first one leaves the queue: it runs upstream, and has no place in a line any more.
    set_row(db, a, status="RUNNING", started_at=utcnow(), account_id="sim-aimlapi")
    assert positions(client, api_key, [a, b, c]) == [None, 0, 1]

    # Once an account is chosen the line is the account's: only queued jobs sent to it count.
    set_row(db, c, account_id="sim-aimlapi")
    assert read(client, api_key, c)["queue_position"] == 0  # b has no account yet
    set_row(db, b, account_id="sim-aimlapi")
    assert positions(client, api_key, [b, c]) == [0, 1]
    set_row(db, b, account_id="sim-minimax")
    assert read(client, api_key, c)["queue_position"] == 0

    # Ended jobs leave every line; the list shows the same positions as a read.
    set_row(db, b, status="CANCELLED", finished_at=utcnow())
    assert read(client, api_key, b)["queue_position"] is None
    assert read(client, other_key, theirs)["queue_position"] == 1  # c is still ahead
    listed = client.get(URL, headers=auth(api_key)).get_json()["data"]
    assert {j["id"]: j["queue_position"] for j in listed} == {
        a: None,
        b: None,
        c: 0,
        other_model: 0,
    }


def test_a_line_longer_than_the_cap_counts_up_to_the_cap(client: Any, api_key: str) -> None:
    ids = [submit(client, api_key) for _ in range(POSITION_CAP + 2)]
    # Counting stops at the cap: a submit or a GET never scans a line of thousands.
    assert positions(client, api_key, ids[-3:]) == [POSITION_CAP - 1, POSITION_CAP, POSITION_CAP]


def test_a_running_job_reports_its_share_of_the_expected_time_and_its_eta(
    client: Any, db: Database, api_key: str
) -> None:
    with db.transaction() as session:
        session.execute(
            sa.update(Model).where(Model.name == "music-2.6").values(expected_seconds=100.0)
        )
    job_id = submit(client, api_key)
    started = utcnow() - dt.timedelta(seconds=40)
    set_row(db, job_id, status="RUNNING", started_at=started)
    body = read(client, api_key, job_id)
    assert body["queue_position"] is None
    assert 0.39 <= body["progress"] <= 0.45, body
    assert body["eta"] == int((started + dt.timedelta(seconds=100)).timestamp())

    # Running late: never done before it has succeeded, and the end is now, not past.
    set_row(db, job_id, started_at=utcnow() - dt.timedelta(seconds=500))
    before = int(utcnow().timestamp())
    body = read(client, api_key, job_id)
    assert body["progress"] == RUNNING_CAP
    assert before <= body["eta"] <= int(utcnow().timestamp())

    set_row(db, job_id, status="SUCCEEDED", finished_at=utcnow())
    body = read(client, api_key, job_id)
    assert (body["progress"], body["eta"], body["queue_position"]) == (1.0, None, None)


@pytest.mark.parametrize("status", ["FAILED", "CANCELLED"])
def test_an_ended_job_that_did_not_succeed_has_no_progress(
    client: Any, db: Database, api_key: str, status: str
) -> None:
    job_id = submit(client, api_key)
    set_row(db, job_id, status=status, started_at=utcnow(), finished_at=utcnow())
    body = read(client, api_key, job_id)
    assert (body["progress"], body["eta"], body["queue_position"]) == (None, None, None)


def test_the_position_count_runs_on_the_partial_indexes_in_a_prepared_plan(
    client: Any, db: Database, api_key: str
) -> None:
    """The hot reads are PREPAREd, so Postgres soon plans them once for any parameters (a
    generic plan): the QUEUED predicate must be written as the indexes' own, not bound."""
    job_id = submit(client, api_key)
    sql = str(_POSITION.statement.compile(dialect=postgresql.dialect()))
    with db.engine.connect() as conn:
        # A test's table is small enough for a scan to win; the point is what can be used.
        for setting in ("plan_cache_mode = force_generic_plan", "enable_seqscan = off"):
            conn.exec_driver_sql(f"SET LOCAL {setting}")
        conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        conn.exec_driver_sql(f"PREPARE position_of(text) AS {sql.replace('%(id)s', '$1')}")
        plan = "\n".join(
            row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE position_of('{job_id}')")
        )
        conn.exec_driver_sql("DEALLOCATE position_of")
    # Both counts (by account, by model) on an index of QUEUED rows alone; which of the two
    # serves which is the planner's choice for the table's size.
    assert plan.count("using ix_jobs_queued_") == 2, plan

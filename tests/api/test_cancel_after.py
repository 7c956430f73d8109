"""The client's deadline: ``Cancel-After`` and ``cancel_after`` on a submit, and what happens to
a job still active when it passes (real Postgres, the API in-process, the engine against the
scripted upstream of ``tests.unit.providers.fake_adapter``; time moved with ``now=``)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest

from app.api.cancel_after import parse_duration
from app.db import Database, utcnow
from app.jobs.engine import Engine
from app.money import ledger
from app.providers.base import Submission
from tests.api.test_list_cancel import (
    PRICE,
    balance,
    ledger_of,
    row,
    set_row,
    slots_in_use,
    step,
)
from tests.conftest import CREDIT, GOOD_BODY, auth
from tests.unit.jobs.support import PENDING, SUCCESS
from tests.unit.providers.fake_adapter import Script

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
OWN_DEADLINE = 900  # JOB_DEADLINE_SECONDS's default; the catalog's models set none


def post(client: Any, key: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post(URL, json={**GOOD_BODY, **body}, headers={**auth(key), **(headers or {})})


def accepted(response: Any, seconds: float) -> str:
    """The job's id, after checking it stored a deadline ``seconds`` after its creation."""
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["cancel_after"] - body["created"] in (int(seconds), int(seconds) + 1)
    job_id: str = body["id"]
    return job_id


def refused(response: Any, param: str) -> str:
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param), error
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h2m3s", 3723.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("45", 45.0),
        (" 10s ", 10.0),
        ("7.25", 7.25),
    ],
)
def test_durations_parse(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "raw",
    ["", "s", "soon", "-5", "-5s", "5 s", "10ms", "1d", "30m1h", "1e3", "0x10", "5S", "9" * 40],
)
def test_non_durations_do_not_parse(raw: str) -> None:
    assert parse_duration(raw) is None


@pytest.mark.parametrize(("header", "seconds"), [("30s", 30), ("5m", 300), ("15m", 900), ("5", 5)])
def test_a_cancel_after_header_is_stored_as_the_jobs_deadline(
    client: Any, db: Database, api_key: str, header: str, seconds: int
) -> None:
    job_id = accepted(post(client, api_key, {"Cancel-After": header}), seconds)
    job = row(db, job_id)
    assert job.cancel_after_at is not None
    assert job.cancel_after_at - job.created_at == dt.timedelta(seconds=seconds)
    # The job's own deadline is unchanged: it bounds the follow-up of the upstream.
    assert job.deadline_at - job.created_at == dt.timedelta(seconds=OWN_DEADLINE)


@pytest.mark.parametrize("header", ["soon", "", "4s", "4.9", "0", "1h30m", "901", "-10s", "1d"])
def test_a_bad_cancel_after_header_is_400_naming_it_and_stores_nothing(
    client: Any, db: Database, api_key: str, header: str
) -> None:
    message = refused(post(client, api_key, {"Cancel-After": header}), "Cancel-After")
    assert "Cancel-After" in message
    assert balance(db) == ledger.Totals(CREDIT, 0)
    assert client.get(URL, headers=auth(api_key)).get_json()["data"] == []


def test_the_cancel_after_field_takes_whole_seconds_and_wins_over_the_header(
    client: Any, api_key: str
) -> None:
    accepted(post(client, api_key, cancel_after=60), 60)
    accepted(post(client, api_key, {"Cancel-After": "10m"}, cancel_after=60), 60)
    # The header alone: the field's absence does not hide it.
    accepted(post(client, api_key, {"Cancel-After": "10m"}, cancel_after=None), 600)
    body = post(client, api_key).get_json()
    assert body["cancel_after"] is None


@pytest.mark.parametrize("value", ["60", 60.5, True, 4, 0, -1, OWN_DEADLINE + 1, [60], {"s": 60}])
def test_a_bad_cancel_after_field_is_400_naming_it(client: Any, api_key: str, value: Any) -> None:
    # A good header does not rescue a bad field: the field is what the body asked for.
    response = post(client, api_key, {"Cancel-After": "30s"}, cancel_after=value)
    assert "cancel_after" in refused(response, "cancel_after")


def test_v2_takes_the_header(client: Any, db: Database, api_key: str) -> None:
    body = {"model": GOOD_BODY["model"], "prompt": GOOD_BODY["prompt"]}
    body["lyrics"] = GOOD_BODY["lyrics"]
    response = client.post(
        "/v2/generate/audio", json=body, headers={**auth(api_key), "Cancel-After": "2m"}
    )
    assert response.status_code == 201, response.get_json()
    job = row(db, response.get_json()["id"])
    assert job.cancel_after_at is not None
    assert job.cancel_after_at - job.created_at == dt.timedelta(minutes=2)
    bad = client.post(
        "/v2/generate/audio", json=body, headers={**auth(api_key), "Cancel-After": "later"}
    )
    assert bad.status_code == 400 and "Cancel-After" in bad.get_json()["message"]


def test_a_retry_with_another_cancel_after_header_replays_the_first_answer(
    client: Any, db: Database, api_key: str
) -> None:
    key = {"Idempotency-Key": "deadline-1"}
    first = post(client, api_key, {**key, "Cancel-After": "30s"})
    again = post(client, api_key, {**key, "Cancel-After": "5m"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert row(db, first.get_json()["id"]).cancel_after_at is not None
    # The body field is part of the request: another value is another request.
    other = post(client, api_key, {"Idempotency-Key": "deadline-2"}, cancel_after=30)
    assert other.status_code == 202
    reused = post(client, api_key, {"Idempotency-Key": "deadline-2"}, cancel_after=60)
    assert reused.status_code == 422


# ------------------------------------------------------------------ when the deadline passes


def past_deadline(db: Database, job_id: str) -> dt.datetime:
    """Move the job's client deadline into the past; the moment to sweep at."""
    set_row(db, job_id, cancel_after_at=utcnow() - dt.timedelta(seconds=1))
    return utcnow()


def test_a_queued_job_past_its_deadline_fails_unsent_and_uncharged(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = accepted(post(client, api_key, cancel_after=30), 30)
    kept = accepted(post(client, api_key, cancel_after=30), 30)
    # Not yet: the sweep leaves a job whose deadline is ahead alone.
    assert engine.expire_overdue() == 0
    assert engine.expire_overdue(past_deadline(db, job_id)) == 1
    body = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert body["status"] == "FAILED"
    assert body["error"]["code"] == "cancel_after_elapsed"
    assert "deadline" in body["error"]["message"]
    assert body["cost"]["state"] == "released"
    job = row(db, job_id)
    assert job.upstream_followup is None and job.next_action_at is None
    assert job.lease_token is None
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    assert balance(db) == ledger.Totals(CREDIT - PRICE, PRICE)  # only the other job's hold
    assert row(db, kept).status == "QUEUED"
    assert script.calls == []


def test_a_running_job_past_its_deadline_fails_and_is_cancelled_upstream(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = accepted(post(client, api_key, {"Cancel-After": "1m"}), 60)
    assert step(engine, job_id) == "running"
    # The scheduler wakes for it, as for any deadline.
    due = engine.next_due()
    assert due is not None and due <= row(db, job_id).cancel_after_at

    assert engine.expire_overdue(past_deadline(db, job_id)) == 1
    job = row(db, job_id)
    assert (job.status, job.error_code) == ("FAILED", "cancel_after_elapsed")
    assert job.upstream_followup == "cancel"
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    assert slots_in_use(engine) == 1  # the upstream is still making the song

    script.on_poll(PENDING)
    assert step(engine, job_id) == "following"
    assert [c.arg for c in script.cancels] == ["gen-1"]
    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "cancelled"  # the follow-up ended
    job = row(db, job_id)
    assert (job.status, job.error_code, job.audio_key) == ("FAILED", "cancel_after_elapsed", None)
    assert job.upstream_followup is None and job.next_action_at is None
    assert slots_in_use(engine) == 0
    assert len(script.cancels) == 1
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})
    assert balance(db) == ledger.Totals(CREDIT, 0)


def test_the_deadline_passing_during_the_submit_call_follows_the_job_the_upstream_made(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = accepted(post(client, api_key, cancel_after=60), 60)

    def expire_then_accept(_: Any) -> Submission:
        assert engine.expire_overdue(past_deadline(db, job_id)) == 1
        # The submit is under way: the upstream may be making the song.
        assert row(db, job_id).upstream_followup == "cancel"
        return Submission("gen-late")

    script.on_submit(expire_then_accept)
    assert step(engine, job_id) == "lost"
    job = row(db, job_id)
    assert (job.status, job.error_code, job.started_at) == ("FAILED", "cancel_after_elapsed", None)
    assert job.generation_id == "gen-late" and job.lease_token is None
    assert slots_in_use(engine) == 1

    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "cancelled"
    assert [c.arg for c in script.cancels] == ["gen-late"]
    assert slots_in_use(engine) == 0
    assert row(db, job_id).audio_key is None
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_the_deadline_passing_during_the_poll_that_found_the_song_wins(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = accepted(post(client, api_key, cancel_after=60), 60)
    assert step(engine, job_id) == "running"

    def expire_then_finish(_: str) -> Any:
        assert engine.expire_overdue(past_deadline(db, job_id)) == 1
        return SUCCESS

    script.on_poll(expire_then_finish)
    assert step(engine, job_id) == "lost"
    job = row(db, job_id)
    assert (job.status, job.error_code, job.audio_key) == ("FAILED", "cancel_after_elapsed", None)
    assert job.upstream_followup is None and job.lease_token is None
    assert slots_in_use(engine) == 0
    assert ledger_of(db, job_id) == Counter({"hold": 1, "release": 1})


def test_a_job_that_succeeded_before_its_deadline_is_charged(
    client: Any, db: Database, api_key: str, engine: Engine, script: Script
) -> None:
    job_id = accepted(post(client, api_key, cancel_after=60), 60)
    assert step(engine, job_id) == "running"
    script.on_poll(SUCCESS)
    assert step(engine, job_id) == "succeeded"
    assert engine.expire_overdue(past_deadline(db, job_id)) == 0
    body = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert (body["status"], body["cost"]["state"]) == ("SUCCEEDED", "captured")
    assert ledger_of(db, job_id) == Counter({"hold": 1, "capture": 1})
    assert script.cancels == []

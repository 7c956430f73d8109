"""Opening live event streams through Flask (real Postgres, the API in-process).

Served by plain WSGI a stream ends after its replay, with the private header that tells the
web server's event loop what to follow (``app.streams``; followed live in
tests/e2e/test_events.py). Here: what is stored and replayed, and every refusal.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa

from app.db import Database
from app.jobs import retention
from app.jobs.models import JobEvent
from app.storage import make_storage
from app.web import create_app
from config import Settings, load_settings
from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"


def parse(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body: each a dict of its fields (``data`` decoded)."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def submit(client: Any, key: str) -> str:
    response = client.post(URL, json=GOOD_BODY, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def stored(db: Database) -> list[tuple[str, str]]:
    with db.session() as session:
        return [
            (e.job_id, e.type) for e in session.scalars(sa.select(JobEvent).order_by(JobEvent.id))
        ]


def test_a_submit_stores_its_queued_event_and_a_cancel_its_own(
    client: Any, api_key: str, db: Database
) -> None:
    job_id = submit(client, api_key)
    assert stored(db) == [(job_id, "music.generation.queued")]
    assert client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key)).status_code == 200
    assert stored(db) == [
        (job_id, "music.generation.queued"),
        (job_id, "music.generation.cancelled"),
    ]


def test_a_job_stream_replays_its_events_with_the_job_as_get_renders_it(
    client: Any, api_key: str
) -> None:
    job_id = submit(client, api_key)
    response = client.get(f"{URL}/{job_id}/events", headers=auth(api_key))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    (queued,) = parse(response.data)
    assert queued["event"] == "music.generation.queued"
    assert queued["data"] == client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    # Still QUEUED: the web server's loop is told to follow it from the replayed event.
    follow = dict(p.split("=", 1) for p in response.headers["X-Chorus-Follow"].split(";"))
    assert follow["job"] == job_id and follow["after"] == queued["id"]
    assert unquote(follow["base"]) == "http://localhost"

    client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key))
    response = client.get(f"{URL}/{job_id}/events", headers=auth(api_key))
    events = parse(response.data)
    assert [e["event"] for e in events] == ["music.generation.queued", "music.generation.cancelled"]
    assert all(e["data"]["status"] == "CANCELLED" for e in events)  # the job as it is now
    assert "X-Chorus-Follow" not in response.headers  # ended: nothing to follow

    # Resumed after the first: only the later one, by header or by query.
    for query, headers in (
        ("", {"Last-Event-ID": queued["id"]}),
        (f"?last_event_id={queued['id']}", {}),
    ):
        response = client.get(f"{URL}/{job_id}/events{query}", headers={**auth(api_key), **headers})
        assert [e["event"] for e in parse(response.data)] == ["music.generation.cancelled"]


def test_the_org_stream_replays_after_last_event_id_and_starts_live_without(
    client: Any, api_key: str, other_key: str
) -> None:
    first, second = submit(client, api_key), submit(client, api_key)
    submit(client, other_key)  # another org's: never in this org's stream
    response = client.get("/v1/events", headers=auth(api_key))
    assert response.status_code == 200 and parse(response.data) == []
    assert "org=" in response.headers["X-Chorus-Follow"]
    response = client.get("/v1/events", headers={**auth(api_key), "Last-Event-ID": "0"})
    events = parse(response.data)
    assert [(e["data"]["id"], e["event"]) for e in events] == [
        (first, "music.generation.queued"),
        (second, "music.generation.queued"),
    ]


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "9" * 19, "١٢"])
def test_a_malformed_last_event_id_is_a_400(client: Any, api_key: str, bad: str) -> None:
    job_id = submit(client, api_key)
    for path in (f"{URL}/{job_id}/events", "/v1/events"):
        response = client.get(path, headers={**auth(api_key), "Last-Event-ID": bad})
        assert response.status_code == 400, response.data
        assert response.get_json()["error"]["param"] == "Last-Event-ID"
        response = client.get(path, query_string={"last_event_id": bad}, headers=auth(api_key))
        assert response.status_code == 400
        assert response.get_json()["error"]["param"] == "last_event_id"


def test_another_orgs_job_and_no_key_are_refused_as_elsewhere(
    client: Any, api_key: str, other_key: str
) -> None:
    job_id = submit(client, api_key)
    response = client.get(f"{URL}/{job_id}/events", headers=auth(other_key))
    assert response.status_code == 404
    assert response.get_json() == client.get(f"{URL}/{job_id}", headers=auth(other_key)).get_json()
    assert client.get("/v1/events").status_code == 403
    assert client.get(f"{URL}/{job_id}/events").status_code == 403


def test_over_the_stream_cap_a_stream_to_follow_is_a_503(
    env: dict[str, str], db: Database, api_key: str
) -> None:
    app = create_app(load_settings({**env, "EVENTS_MAX_STREAMS": "0"}))
    client = app.test_client()
    job_id = submit(client, api_key)
    for path in (f"{URL}/{job_id}/events", "/v1/events"):
        response = client.get(path, headers=auth(api_key))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    # A job that ended has nothing to follow: its replay is no stream held open.
    client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key))
    assert client.get(f"{URL}/{job_id}/events", headers=auth(api_key)).status_code == 200


def test_retention_deletes_a_purged_jobs_events(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    kept, purged = submit(client, api_key), submit(client, api_key)
    for job_id in (kept, purged):
        client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key))
    with db.transaction() as session:
        session.execute(
            sa.text("UPDATE jobs SET created_at = now() - interval '40 days' WHERE id = :id"),
            {"id": purged},
        )
    done = retention.purge_expired(db, make_storage(settings), days=30, batch=10)
    assert done == 1
    assert {job_id for job_id, _ in stored(db)} == {kept}

"""A webhook's ``data`` is the job object the API answers, its links at ``PUBLIC_URL``.

The webhook worker renders the job without Flask (``app.jobs.present``), from the route
templates the jobs package owns; the API renders it for the request it answers. Both are
compared here on a job that succeeded (every link set), with one signing instant, and the
links the webhook carries are then followed through the API's own routes.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select

from app.db import Database
from app.jobs.models import Job
from app.webhooks.delivery import Dispatcher
from app.webhooks.models import WebhookDelivery
from config import load_settings
from tests.conftest import auth
from tests.unit.jobs.support import SUCCESS, new_job, step

pytestmark = pytest.mark.usefixtures("catalog")

SUCCEEDED = "music.generation.succeeded"
RUNNING = "music.generation.running"


def payload(
    dispatcher: Dispatcher, db: Database, job_id: str, event: str = SUCCEEDED
) -> dict[str, Any]:
    with db.session() as session:
        delivery = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == event
            )
        ).one()
        job = session.get(Job, job_id)
        assert job is not None
        body: dict[str, Any] = json.loads(dispatcher.body(delivery, job))
    return body


def test_the_payload_is_the_api_job_object_with_links_at_the_public_url(
    engine: Any,
    script: Any,
    db: Database,
    settings: Any,
    env: dict[str, str],
    client: Any,
    api_key: str,
) -> None:
    job_id = new_job(db, settings, callback_url="http://hooks.example/chorus")
    assert step(engine, db, job_id) == "running"
    script.on_poll(SUCCESS)
    assert step(engine, db, job_id) == "succeeded"
    public = settings.public_url
    assert public == "http://127.0.0.1:8000"

    signed_at = 1_900_000_000  # one instant for both signatures, so the links are equal
    with mock.patch.object(TimestampSigner, "get_timestamp", return_value=signed_at):
        sent = payload(Dispatcher(settings, db), db, job_id)
        answered = client.get(
            f"/v1/music/generations/{job_id}", headers=auth(api_key), base_url=public
        )
    assert answered.status_code == 200
    assert sent["type"] == SUCCEEDED
    assert sent["data"] == answered.get_json()
    urls = sent["data"]["urls"]
    assert urls["get"] == f"{public}/v1/music/generations/{job_id}"
    assert urls["content"] == f"{public}/v1/music/generations/{job_id}/content"
    assert urls["audio"].startswith(f"{public}/v1/files/audio/")

    # Each link is a route of the API (the audio link's token is freshly signed).
    sent = payload(Dispatcher(settings, db), db, job_id)
    for name in ("get", "content", "audio"):
        path = urlsplit(sent["data"]["urls"][name]).path
        assert client.get(path, headers=auth(api_key)).status_code == 200, name

    # A PUBLIC_URL with a mount point, a default port and a trailing slash gives the links
    # the API would give a request arriving there.
    mounted = load_settings({**env, "PUBLIC_URL": "https://chorus.example:443/api/"})
    with mock.patch.object(TimestampSigner, "get_timestamp", return_value=signed_at):
        sent = payload(Dispatcher(mounted, db), db, job_id)
        answered = client.get(
            f"/v1/music/generations/{job_id}",
            headers=auth(api_key),
            base_url="https://chorus.example:443/api/",
        )
    assert sent["data"] == answered.get_json()
    assert (
        sent["data"]["urls"]["get"] == f"https://chorus.example/api/v1/music/generations/{job_id}"
    )


def test_a_running_jobs_payload_carries_its_progress_and_eta_as_its_get_does(
    engine: Any, db: Database, settings: Any, client: Any, api_key: str
) -> None:
    job_id = new_job(db, settings, callback_url="http://hooks.example/chorus")
    assert step(engine, db, job_id) == "running"

    sent = payload(Dispatcher(settings, db), db, job_id, RUNNING)["data"]
    answered = client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key)).get_json()
    assert sent["status"] == answered["status"] == "RUNNING"
    assert sent["eta"] is not None
    assert sent["eta"] == answered["eta"]  # the start plus the model's expected time
    assert sent["progress"] is not None
    assert 0.0 <= sent["progress"] <= answered["progress"]

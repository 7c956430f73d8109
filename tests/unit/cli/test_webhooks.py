"""``chorus webhooks …`` as an operator runs it: the real console script, the test database."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks import Webhook

from app.db import Database, utcnow
from app.webhooks import signing
from tests.conftest import GOOD_BODY, auth
from tests.unit.cli.test_commands import chorus


def test_secret_show_and_rotate(env: dict[str, str], db: Database, api_key: str) -> None:
    first = chorus(env, "webhooks", "secret", "show", "--org", "acme").stdout.strip()
    assert first.startswith("whsec_")
    assert chorus(env, "webhooks", "secret", "show", "--org", "acme").stdout.strip() == first
    second = chorus(env, "webhooks", "secret", "rotate", "--org", "acme").stdout.strip()
    assert second.startswith("whsec_") and second != first
    with db.session() as session:
        org_id = 1
        both = signing.signing_secrets(session, org_id)
    assert both == [second, first]
    headers = signing.headers(both, "msg_x", utcnow(), "{}")
    Webhook(first).verify("{}", headers)
    Webhook(second).verify("{}", headers)
    missing = chorus(env, "webhooks", "secret", "show", "--org", "nobody", check=False)
    assert missing.returncode != 0 and "no org" in missing.stderr


def test_endpoint_set_refuses_a_private_target(env: dict[str, str], api_key: str) -> None:
    refused = chorus(
        env, "webhooks", "endpoint", "set", "--org", "acme", "http://169.254.169.254/", check=False
    )
    assert refused.returncode != 0 and "refused" in refused.stderr


@pytest.mark.env(ALLOW_PRIVATE_URLS="true")
def test_endpoint_set_show_delete(env: dict[str, str], api_key: str, client: Any) -> None:
    url = "http://127.0.0.1:9/hook"
    args = ("--org", "acme", "--event", "music.generation.failed", url)
    chorus(env, "webhooks", "endpoint", "set", *args)
    shown = chorus(env, "webhooks", "endpoint", "show", "--org", "acme").stdout
    assert shown.split("\t")[:2] == [url, "music.generation.failed"]
    body = client.get("/v1/webhooks/endpoint", headers=auth(api_key)).json
    assert body["url"] == url and body["events"] == ["music.generation.failed"]
    chorus(env, "webhooks", "endpoint", "delete", "--org", "acme")
    assert client.get("/v1/webhooks/endpoint", headers=auth(api_key)).status_code == 404


@pytest.mark.env(ALLOW_PRIVATE_URLS="true")
def test_deliveries_and_redeliver(
    env: dict[str, str], db: Database, api_key: str, client: Any, catalog: Any
) -> None:
    # No worker runs: the delivery is written by hand, as the engine's write would.
    from app.jobs.models import Job
    from app.jobs.status import JobStatus
    from app.webhooks import outbox

    response = client.post(
        "/v1/music/generations",
        json={**GOOD_BODY, "callback_url": "http://127.0.0.1:9/hook"},
        headers=auth(api_key),
    )
    job_id = response.json["id"]
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert outbox.enqueue_for(session, job, JobStatus.FAILED) == 1
    listed = chorus(env, "webhooks", "deliveries", job_id).stdout
    delivery_id = listed.split("\t")[0]
    assert delivery_id.startswith("msg_") and "music.generation.failed\tpending" in listed
    assert chorus(env, "webhooks", "redeliver", delivery_id).stdout.strip() == delivery_id
    unknown = chorus(env, "webhooks", "deliveries", "luid_nope", check=False)
    assert unknown.returncode != 0

"""The outbox's rows as the API and the CLI leave them, on the test database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.db import Database
from app.jobs.models import Job
from app.jobs.status import JobStatus
from app.webhooks import outbox
from app.webhooks.models import WebhookDelivery
from tests.conftest import GOOD_BODY, auth


@pytest.mark.env(ALLOW_PRIVATE_URLS="true")
def test_removing_the_endpoint_gives_up_its_waiting_deliveries_only(
    client: Any, db: Database, api_key: str, catalog: Any
) -> None:
    url = "http://127.0.0.1:9/hook"
    set_to = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(api_key))
    assert set_to.status_code == 200, set_to.json
    ids = [
        client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key)).json["id"]
        for _ in range(2)
    ]
    # No worker runs: the deliveries are written as the status writer's hook writes them.
    with db.transaction() as session:
        for job_id, status in zip(ids, (JobStatus.FAILED, JobStatus.SUCCEEDED), strict=True):
            job = session.get(Job, job_id)
            assert job is not None and outbox.enqueue_for(session, job, status) == 1
        sent = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == ids[1])
        ).one()
        sent.status = outbox.DELIVERED

    assert client.delete("/v1/webhooks/endpoint", headers=auth(api_key)).status_code == 204

    with db.session() as session:
        rows = {
            d.job_id: (d.status, d.next_attempt_at, d.last_error)
            for d in session.scalars(select(WebhookDelivery))
        }
    assert rows[ids[0]] == (outbox.DISABLED, None, "endpoint removed")
    assert rows[ids[1]][0] == outbox.DELIVERED

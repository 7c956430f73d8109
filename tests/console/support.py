"""A deployment with a little of everything for the ops console's tests to show.

Jobs go in through the API (the Flask test client) and are moved by the engine with its
scripted upstream (``tests/unit/jobs/support.py``); the webhook is delivered by the real
dispatcher to a real receiver; a breaker is opened by the failures the engine records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pytest_httpserver import HTTPServer

from app.db import Database
from app.jobs.accounts import BREAKER_THRESHOLD, Accounts
from app.jobs.engine import Engine
from app.providers.base import ProviderError
from app.webhooks.delivery import Dispatcher
from config import Settings
from tests.conftest import GOOD_BODY, auth, funded_key
from tests.unit.jobs.support import SUCCESS, step
from tests.unit.providers.fake_adapter import Script

LOGIN = ("ops", "s3cret-pass")
OTHER_LOGIN = ("lead", "another-pass")
LOGINS = ",".join(":".join(pair) for pair in (LOGIN, OTHER_LOGIN))
SUCCEEDED_EVENT = "music.generation.succeeded"
FAILED_CODE = "upstream_auth_failed"


def with_console(settings: Settings, logins: str | None = LOGINS) -> Settings:
    return dataclasses.replace(settings, ops_basic_auth=logins)


@dataclass
class Workload:
    succeeded: str
    failed: str
    cancelled: str
    queued: str
    broken_account: str


def submit(client: Any, key: str, **extra: Any) -> str:
    response = client.post("/v1/music/generations", json={**GOOD_BODY, **extra}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def make_workload(
    client: Any,
    key: str,
    db: Database,
    settings: Settings,
    engine: Engine,
    script: Script,
    receiver: HTTPServer,
    broken_account: str,
) -> Workload:
    """One job of each ending and one still queued, a delivered webhook, an open breaker,
    and a second tenant."""
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    succeeded = submit(
        client,
        key,
        callback_url=f"http://127.0.0.1:{receiver.port}/hook",
        webhook_events=[SUCCEEDED_EVENT],
    )
    script.on_poll(SUCCESS)
    assert step(engine, db, succeeded) == "running"
    assert step(engine, db, succeeded) == "succeeded"
    dispatcher = Dispatcher(settings, db)
    claims = dispatcher.claim()
    assert len(claims) == 1
    assert dispatcher.attempt(claims[0].delivery_id, claims[0].token) == "delivered"

    failed = submit(client, key)
    script.on_submit(ProviderError(FAILED_CODE, "bad key", retryable=False, status_code=401))
    assert step(engine, db, failed) == "failed"

    cancelled = submit(client, key)
    answer = client.post(f"/v1/music/generations/{cancelled}/cancel", headers=auth(key))
    assert answer.status_code == 200, answer.get_json()

    queued = submit(client, key)
    funded_key(db, "globex", 5_000)  # a tenant with money and no jobs yet
    for _ in range(BREAKER_THRESHOLD):
        Accounts(db).record_failure(broken_account)
    return Workload(succeeded, failed, cancelled, queued, broken_account)

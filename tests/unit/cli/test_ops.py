"""``chorus status``, ``chorus jobs …`` and ``chorus accounts …``: the real console script
against the test database and Redis (the Procfile test runs ``status`` beside live workers)."""

from __future__ import annotations

import json
from typing import Any

from app.catalog.models import UpstreamAccount
from app.db import Database
from app.jobs.accounts import BREAKER_THRESHOLD, Accounts
from tests.conftest import GOOD_BODY, auth
from tests.unit.cli.test_commands import chorus


def chorus_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(chorus(env, *args, "--json").stdout)


def test_accounts_list_disable_enable_and_reset_the_breaker(
    env: dict[str, str], db: Database, catalog: dict[str, Any]
) -> None:
    account = catalog["accounts"][0]["id"]
    for _ in range(BREAKER_THRESHOLD):
        Accounts(db).record_failure(account)
    listed = {a["id"]: a for a in chorus_json(env, "accounts", "list")}
    assert listed.keys() == {a["id"] for a in catalog["accounts"]}
    assert listed[account]["breaker"] == "open"
    assert listed[account]["failures"] == BREAKER_THRESHOLD
    assert listed[account]["in_flight"] == 0 and listed[account]["enabled"] is True

    assert "breaker closed" in chorus(env, "accounts", "reset-breaker", account).stdout
    after = {a["id"]: a for a in chorus_json(env, "accounts", "list")}
    assert after[account]["breaker"] == "closed" and after[account]["failures"] == 0

    chorus(env, "accounts", "disable", account)
    with db.session() as session:
        assert session.get(UpstreamAccount, account).enabled is False
    chorus(env, "accounts", "enable", account)
    assert {a["id"]: a for a in chorus_json(env, "accounts", "list")}[account]["enabled"]

    unknown = chorus(env, "accounts", "disable", "no-such-account", check=False)
    assert unknown.returncode != 0 and "no upstream account" in unknown.stderr


def test_jobs_list_filters_and_show_tells_the_money(
    env: dict[str, str], client: Any, api_key: str, catalog: dict[str, Any]
) -> None:
    created = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202, created.get_json()
    job_id = created.get_json()["id"]

    listed = chorus_json(env, "jobs", "list", "--org", "acme")
    assert [row["id"] for row in listed] == [job_id]
    assert listed[0]["status"] == "QUEUED" and listed[0]["model"] == GOOD_BODY["model"]
    assert chorus_json(env, "jobs", "list", "--status", "succeeded") == []
    assert chorus_json(env, "jobs", "list", "--org", "globex") == []
    table = chorus(env, "jobs", "list").stdout.splitlines()
    assert table[0].split() == ["id", "org", "model", "status", "account", "error", "created"]
    assert table[1].startswith(job_id) and len(table) == 2

    told = chorus_json(env, "jobs", "show", job_id)
    assert told["job"]["id"] == job_id and told["job"]["org"] == "acme"
    assert [entry["kind"] for entry in told["money"]] == ["hold"]
    assert told["money"][0]["amount"] == -told["job"]["price"] < 0
    assert told["deliveries"] == []
    missing = chorus(env, "jobs", "show", "luid_nope", check=False)
    assert missing.returncode != 0 and "no job" in missing.stderr


def test_status_counts_recent_jobs_and_the_due_backlog(
    env: dict[str, str], client: Any, api_key: str, catalog: dict[str, Any]
) -> None:
    for _ in range(2):
        assert client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    data = chorus_json(env, "status")
    assert data["jobs_last_hour"] == {"QUEUED": 2}
    # No scheduler runs here: both are due and nobody leases them.
    assert data["due_backlog"]["jobs"] == 2 and data["scheduler_leading"] is False
    assert data["webhooks"] == {"pending": 0, "overdue": 0, "dead": 0}
    assert data["broker"]["workers"] == [] and set(data["broker"]["queues"]) >= {"chorus.submit"}
    text = chorus(env, "status").stdout
    assert "NONE LEADING" in text and "NONE ANSWERING" in text and "2 jobs" in text


def test_status_reads_queue_depths_from_rabbitmq(
    env: dict[str, str], db: Database, amqp_url: str
) -> None:
    from kombu import Connection, Queue

    from tests import rabbitmq

    rabbitmq.purge(amqp_url)
    with Connection(amqp_url) as conn:
        # Declared and holding three messages: as a worker and the scheduler would leave it.
        Queue("chorus.poll")(conn.default_channel).declare()
        for _ in range(3):
            conn.Producer().publish({"claims": []}, routing_key="chorus.poll", exchange="")
    data = chorus_json({**env, "CELERY_BROKER_URL": amqp_url}, "status")
    assert "error" not in data["broker"], data["broker"]
    # Queues never declared count as empty, and a missing one does not spoil the next.
    assert data["broker"]["queues"] == {
        "chorus.submit": 0,
        "chorus.poll": 3,
        "chorus.webhooks": 0,
        "chorus.sync": 0,
    }
    rabbitmq.purge(amqp_url)

"""The logs of real processes: the API under gunicorn, a worker, the webhooks worker and the
scheduler, each started as its Procfile line starts it, with JSON lines (the default format).

Every line each writes while a job runs is a JSON object, and the job's id alone finds its
whole story across them: submitted (web, with the caller's request id), RUNNING and SUCCEEDED
(worker, with the upstream account and generation), its webhook delivered (webhooks).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from app.cli.processes import web_argv
from config import load_settings
from tests.conftest import GOOD_BODY, Processes, auth, wait_for
from tests.e2e.test_procfile import Receiver, _answers
from tests.e2e.test_procfile import receiver as receiver  # the module's webhook consumer
from tests.serving import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
# What every line has, whoever wrote it.
ALWAYS = {"time", "level", "logger", "message", "service", "pid"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line of ``text`` as the JSON object it must be (an AssertionError names the first
    that is not)."""
    parsed = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict), line
        assert record.keys() >= ALWAYS, line
        parsed.append(record)
    return parsed


def start_web(procs: Processes) -> str:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.env.update(PORT=str(port), PUBLIC_URL=base)
    procs.start("web", web_argv(load_settings(procs.env)))
    wait_for(lambda: _answers(f"{base}/healthz"), 60, message="the API under gunicorn")
    return base


@pytest.mark.env(ALLOW_PRIVATE_URLS="true", WEB_CONCURRENCY="1", WEB_THREADS="4")
def test_every_line_is_json_and_a_job_id_finds_its_whole_story(
    api_key: str, sim: str, procs: Processes, receiver: Receiver
) -> None:
    base = start_web(procs)
    procs.worker()
    procs.webhooks_worker()
    procs.scheduler()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    created = requests.post(
        f"{base}{URL}",
        json={**GOOD_BODY, "callback_url": hook, "webhook_events": ["music.generation.succeeded"]},
        headers={**auth(api_key), "X-Request-Id": "client-req-42"},
        timeout=10,
    )
    assert created.status_code == 202, created.text
    assert created.headers["X-Request-Id"] == "client-req-42"
    job_id = created.json()["id"]

    def story() -> dict[str, list[dict[str, Any]]]:
        return {
            name: [r for r in json_lines(procs.log(name)) if r.get("job_id") == job_id]
            for name in ("web", "worker", "webhooks")
        }

    def told() -> bool:
        return any("delivered" in r["message"] for r in story()["webhooks"])

    wait_for(told, 90, interval=0.5, message="the webhook's delivery to be logged")
    assert receiver.received

    # Every line of every process is JSON (the scheduler's, which never names a job, too).
    json_lines(procs.log("scheduler"))
    lines = story()
    submitted = [r for r in lines["web"] if r["logger"] == "chorus.jobs"]
    assert len(submitted) == 1, lines["web"]
    assert submitted[0]["status"] == "QUEUED"
    assert submitted[0]["request_id"] == "client-req-42"
    assert submitted[0]["service"] == "web"
    org_id = submitted[0]["org_id"]

    changes = {r["status"]: r for r in lines["worker"] if r["logger"] == "chorus.jobs"}
    assert set(changes) == {"RUNNING", "SUCCEEDED"}, lines["worker"]
    running, succeeded = changes["RUNNING"], changes["SUCCEEDED"]
    for change in (running, succeeded):
        assert change["level"] == "INFO"
        assert change["service"] == "worker"
        assert change["org_id"] == org_id
        assert change["account"].startswith("sim-")
        assert change["generation_id"]
    assert running["generation_id"] == succeeded["generation_id"]

    (delivered,) = [r for r in lines["webhooks"] if "delivered" in r["message"]]
    assert delivered["org_id"] == org_id
    assert delivered["http_status"] == 204
    assert delivered["service"] == "webhooks"
    # Lines written in a Celery task name it (Celery's own report of each task, here).
    reports = [r for r in json_lines(procs.log("worker")) if r["logger"] == "celery.app.trace"]
    assert reports
    assert all(r["task_name"].startswith("chorus.") and r["task_id"] for r in reports), reports

    # gunicorn's access line for the submit: the same request id, and the request's facts.
    access = [r for r in json_lines(procs.log("web")) if r["logger"] == "gunicorn.access"]
    (post,) = [r for r in access if r["method"] == "POST"]
    assert post["request_id"] == "client-req-42"
    assert post["status"] == 202
    assert post["path"] == URL

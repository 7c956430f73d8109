"""Metrics from the production shape: the Procfile under honcho with two web processes
(WEB_CONCURRENCY=2) and two worker processes (each a Celery prefork of two), then one scrape
of the web's ``/metrics`` after a known mix of jobs. Every counter must add up across the
processes that wrote it: the requests over both web processes, the jobs, upstream calls and
money over both workers, the webhook over the webhooks worker."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app import metrics
from tests.conftest import GOOD_BODY, TEST_REDIS_URL, clear_redis, empty_database, wait_for
from tests.e2e.test_procfile import TERMINAL, Honcho, Receiver, receiver, shape_env  # noqa: F401
from tests.scrape import Samples, samples, value
from tests.serving import free_port, free_ports

pytestmark = pytest.mark.e2e

TOKEN = "metrics-token-for-the-procfile-test"
MODEL = GOOD_BODY["model"]
ACCOUNT = "sim-aimlapi"  # the default catalog's only route for MODEL
JOB_ROUTE = "/v1/music/generations/<job_id>"
WAIT_MAX_WAITERS = 5
PROCESSES = ["web", "worker", "worker_sync", "webhooks", "scheduler", "sim"]


@pytest.fixture(scope="module")
def shape(
    tmp_path_factory: pytest.TempPathFactory,
    receiver: Receiver,  # noqa: F811
) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("metrics")
    clear_redis(TEST_REDIS_URL)
    web_port, sim_port = free_ports(2)
    base = f"http://127.0.0.1:{web_port}"
    with empty_database(f"{os.getpid()}_metrics") as url:
        honcho = Honcho(
            tmp_path,
            {
                **shape_env(url, web_port, sim_port, tmp_path / "var"),
                "WORKER_CONCURRENCY": "2",
                # The cancel's follow-up waits out the lease of the poll it interrupted.
                "LEASE_SECONDS": "5",
                "WAIT_MAX_WAITERS": str(WAIT_MAX_WAITERS),
                "METRICS_TOKEN": TOKEN,
            },
        )
        released = honcho.release()
        assert released.returncode == 0, released.stdout.decode()[-4000:]
        honcho.start(["-c", "worker=2", *PROCESSES])
        try:
            wait_for(lambda: _answers(f"{base}/healthz"), 60, message="the API")
            key = honcho.run("chorus keys create --org metrics")
            honcho.run("chorus balance add --org metrics 10000")
            yield {"base": base, "key": key, "honcho": honcho, "var": tmp_path / "var"}
        finally:
            honcho.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Client:
    """The API, counting the GETs of a job it makes (the web processes must count as many)."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.job_reads = 0

    def submit(self, prompt: str, **extra: Any) -> str:
        created = requests.post(
            f"{self.base}/v1/music/generations",
            json={**GOOD_BODY, "prompt": prompt, **extra},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert created.status_code == 202, created.text
        return str(created.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        self.job_reads += 1
        answer = requests.get(
            f"{self.base}/v1/music/generations/{job_id}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def ended(self, job_id: str) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job["status"] in TERMINAL else None

    def scrape(self) -> Samples:
        answer = requests.get(
            f"{self.base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        return samples(answer.text)


def test_one_scrape_adds_up_every_process(shape: dict[str, Any], receiver: Receiver) -> None:  # noqa: F811
    api = Client(shape["base"], shape["key"])
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    assert requests.get(f"{api.base}/metrics", timeout=10).status_code == 401

    # Two successes (one with a webhook), an upstream that refuses the key, a cancel.
    ok = [
        api.submit("Sunny pop", callback_url=hook, webhook_events=["music.generation.succeeded"]),
        api.submit("Rainy jazz"),
    ]
    refused = api.submit("Refused song [sim:submit-401]")
    slow = api.submit("Slow ballad [sim:latency=60]")
    for job_id in [*ok, refused]:
        wait_for(lambda job_id=job_id: api.ended(job_id), 60, message=f"{job_id} to end")
    # Cancelled once upstream has it, so that it was sent exactly once.
    wait_for(lambda: api.job(slow)["status"] == "RUNNING", 30, message="the slow job upstream")
    cancel = requests.post(
        f"{api.base}/v1/music/generations/{slow}/cancel",
        headers={"Authorization": f"Bearer {api.key}"},
        timeout=10,
    )
    assert cancel.status_code == 200, cancel.text
    wait_for(lambda: receiver.received, 60, message="the webhook")
    assert [api.job(j)["status"] for j in ok] == ["SUCCEEDED", "SUCCEEDED"]
    assert api.job(refused)["error"]["code"] == "upstream_auth_failed"

    def settled() -> Samples | None:
        found = api.scrape()
        ready = (
            value(found, "chorus_webhook_attempts_total", outcome="delivered") >= 1
            and value(
                found, "chorus_upstream_calls_total", account=ACCOUNT, operation="cancel", code="ok"
            )
            >= 1
        )
        return found if ready else None

    found = wait_for(settled, 30, message="the workers' last counts")

    def jobs(status: str, error_code: str = "") -> float:
        return value(
            found,
            "chorus_job_status_changes_total",
            model=MODEL,
            status=status,
            error_code=error_code,
        )

    # Requests, over both web processes.
    requests_total = "chorus_http_requests_total"
    assert (
        value(found, requests_total, method="GET", route=JOB_ROUTE, status="200") == api.job_reads
    )
    assert (
        value(found, requests_total, method="POST", route="/v1/music/generations", status="202")
        == 4
    )
    cancel_route = "/v1/music/generations/<job_id>/cancel"
    assert value(found, requests_total, method="POST", route=cancel_route, status="200") == 1
    assert (
        value(found, "chorus_http_request_duration_seconds_count", method="GET", route=JOB_ROUTE)
        == api.job_reads
    )
    # Jobs, as the API accepted them and as the workers (and the cancel) moved them.
    assert value(found, "chorus_jobs_accepted_total", model=MODEL, surface="v1") == 4
    assert jobs("RUNNING") == 3
    assert jobs("SUCCEEDED") == 2
    assert jobs("FAILED", "upstream_auth_failed") == 1
    assert jobs("CANCELLED") == 1
    # Upstream calls: three submits answered, one refused (once: it is not retried).
    calls = "chorus_upstream_calls_total"
    assert value(found, calls, account=ACCOUNT, operation="submit", code="ok") == 3
    assert (
        value(found, calls, account=ACCOUNT, operation="submit", code="upstream_auth_failed") == 1
    )
    assert value(found, calls, account=ACCOUNT, operation="cancel", code="ok") == 1
    polls = sum(
        value(found, calls, account=ACCOUNT, operation=operation, code="ok")
        for operation in ("poll", "poll_batch")
    )
    assert polls >= 2
    assert (
        value(
            found,
            "chorus_upstream_call_duration_seconds_count",
            account=ACCOUNT,
            operation="submit",
        )
        == 4
    )
    # Money: four holds of 100, two captured, two released.
    for kind, count in {"hold": 4, "capture": 2, "release": 2}.items():
        assert value(found, "chorus_money_operations_total", kind=kind, currency="CNY") == count
        assert (
            value(found, "chorus_money_amount_minor_total", kind=kind, currency="CNY")
            == 100 * count
        )
    # The webhook, from the webhooks worker.
    assert value(found, "chorus_webhook_attempts_total", outcome="delivered") == 1
    assert value(found, "chorus_webhook_attempt_duration_seconds_count", result="delivered") == 1
    # Live gauges over the two live web processes: each offers its waiting slots.
    assert value(found, "chorus_wait_capacity") == 2 * WAIT_MAX_WAITERS
    assert value(found, "chorus_wait_waiters") == 0
    # The database's view, once per scrape.
    assert value(found, "chorus_database_up") == 1
    assert value(found, "chorus_scheduler_leading") == 1
    assert value(found, "chorus_jobs_due_unclaimed") == 0
    assert value(found, "chorus_money_held_ledger_minor", currency="CNY") == value(
        found, "chorus_money_held_balances_minor", currency="CNY"
    )
    assert (
        value(
            found,
            "chorus_upstream_breaker_state",
            account=ACCOUNT,
            provider="aimlapi",
            state="closed",
        )
        == 1
    )

    # Each process wrote to a folder of its own: both web processes' pids under one web
    # folder, the two worker instances in two.
    folders = [p.name for p in (shape["var"] / "metrics").iterdir()]
    assert sum("-worker-" in name for name in folders) == 2, folders
    assert sum("-web-" in name for name in folders) == 1, folders
    for process in ("webhooks", "worker_sync", "scheduler"):
        assert sum(f"-{process}-" in name for name in folders) == 1, folders


WORKER_METRICS_PORT = free_port()


@pytest.mark.env(METRICS_PORT=str(WORKER_METRICS_PORT), METRICS_TOKEN=TOKEN)
def test_a_worker_on_a_host_of_its_own_serves_its_metrics(procs: Any, env: dict[str, str]) -> None:
    # `chorus worker`, as compose runs it: the command binds the folder, then becomes Celery.
    worker = procs.start("worker", [sys.executable, "-m", "app.cli", "worker"])
    url = f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics"

    def scraped() -> requests.Response | None:
        try:
            return requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2)
        except requests.RequestException:
            return None

    answer = wait_for(scraped, 60, interval=0.5, message="the worker's metrics server")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    samples(answer.text)  # parses
    assert requests.get(url, timeout=5).status_code == 401
    # The folder is the command's pid's, which the exec kept for Celery's main process.
    folders = [p.name for p in (Path(env["CHORUS_VAR_DIR"]) / "metrics").iterdir()]
    assert folders == [metrics.folder_name("worker", worker.pid)]

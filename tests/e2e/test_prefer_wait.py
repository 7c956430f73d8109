"""``Prefer: wait`` end to end: real worker, scheduler and simulator processes, real Redis.

The API runs in-process (its wait hub is a thread of the test process); the worker that ends
the job publishes on Redis from its own process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.jobs.models import Job
from app.web import create_app
from config import load_settings
from tests.conftest import GOOD_BODY, Processes, auth, job_rows
from tests.serving import serve, stop_hub

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

URL = "/v1/music/generations"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@pytest.fixture
def stack(sim: str, procs: Processes) -> Processes:
    procs.worker()
    procs.scheduler()
    # The waits below are measured from the POST: start them once the scheduler leads and
    # the worker has run what it sends first (the maintenance tasks).
    procs.wait_first_round()
    return procs


def make_app(env: dict[str, str], **overrides: str) -> Any:
    """An API of its own settings (the worker and scheduler keep the test's)."""
    app = create_app(load_settings({**env, **overrides}))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def apps() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for app in made:
        stop_hub(app)


def timed_post(app: Any, key: str, prefer: str, prompt: str = GOOD_BODY["prompt"]) -> Any:
    began = time.monotonic()
    response = app.test_client().post(
        URL, json={**GOOD_BODY, "prompt": prompt}, headers={**auth(key), "Prefer": prefer}
    )
    response.elapsed_s = time.monotonic() - began
    response.answered_at = time.time()
    return response


def succeeded_lag(app: Any, key: str, db: Any, prefer: str) -> tuple[Any, float]:
    """POST with ``Prefer: <prefer>``, which must answer the job SUCCEEDED: the response, and
    how long after the job's end (its ``finished_at``) the answer came."""
    response = timed_post(app, key, prefer)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "SUCCEEDED"
    with db.session() as session:
        finished = session.scalar(sa.select(Job.finished_at))
    assert finished is not None
    return response, response.answered_at - finished.timestamp()


def test_a_job_that_ends_within_the_wait_comes_back_terminal(
    stack: Processes, env: dict[str, str], api_key: str, apps: list[Any], db: Any
) -> None:
    app = make_app(env)
    apps.append(app)
    response = timed_post(app, api_key, "wait=30")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "SUCCEEDED"
    assert body["audio"] and body["audio_info"]["duration_ms"] > 0
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Location"] == body["urls"]["get"]
    assert response.elapsed_s < 25
    (job,) = job_rows(db)
    assert job.status == "SUCCEEDED"


def test_a_wait_shorter_than_the_job_answers_the_job_as_it_is_after_n_seconds(
    stack: Processes, env: dict[str, str], api_key: str, apps: list[Any]
) -> None:
    app = make_app(env)
    apps.append(app)
    response = timed_post(app, api_key, "wait=2", prompt="[sim:latency=20] slow ambient drone")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] in {"QUEUED", "RUNNING"}
    assert response.headers["Preference-Applied"] == "wait=2"
    assert 1.9 <= response.elapsed_s < 4.5


def test_the_notification_wakes_the_request(
    stack: Processes, env: dict[str, str], api_key: str, apps: list[Any], db: Any
) -> None:
    # The database re-check runs every 30 s: only the worker's message can answer sooner.
    app = make_app(env, WAIT_RECHECK_SECONDS="30")
    apps.append(app)
    response, lag = succeeded_lag(app, api_key, db, "wait=25")
    assert response.elapsed_s < 20
    # Woken within moments of the terminal commit, not at a re-check.
    assert lag < 2.0


def test_without_redis_the_database_recheck_answers(
    stack: Processes, env: dict[str, str], api_key: str, apps: list[Any], db: Any
) -> None:
    # The embedded default's shape: the API has no Redis, so no notification can reach it.
    app = make_app(env, REDIS_URL="", WAIT_RECHECK_SECONDS="1")
    apps.append(app)
    response, lag = succeeded_lag(app, api_key, db, "wait=30")
    assert response.elapsed_s < 25
    # Found at a re-check: at most about one interval after the job ended.
    assert lag < 2.5


def test_a_lost_notification_is_covered_by_the_recheck(
    stack: Processes, env: dict[str, str], api_key: str, apps: list[Any], db: Any
) -> None:
    # The API listens on another prefix's channel: the worker's message never reaches it.
    app = make_app(env, REDIS_KEY_PREFIX="elsewhere:", WAIT_RECHECK_SECONDS="2")
    apps.append(app)
    _, lag = succeeded_lag(app, api_key, db, "wait=30")
    assert lag < 3.5


@pytest.mark.env(WAIT_MAX_WAITERS="1")
def test_requests_over_the_waiter_cap_answer_at_once(app: Any, db: Any, api_key: str) -> None:
    # No worker: both jobs stay QUEUED, so a granted wait lasts its full 3 s.
    answers: list[tuple[float, requests.Response]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    with serve(app) as base:

        def one(n: int) -> None:
            barrier.wait()
            began = time.monotonic()
            response = requests.post(
                f"{base}{URL}",
                json={**GOOD_BODY, "prompt": f"cap test {n}"},
                headers={**auth(api_key), "Prefer": "wait=3"},
                timeout=30,
            )
            with lock:
                answers.append((time.monotonic() - began, response))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert len(answers) == 2
    answers.sort(key=lambda a: a[0])
    (quick_s, quick), (held_s, held) = answers
    assert quick.status_code == held.status_code == 202
    assert "Preference-Applied" not in quick.headers
    assert quick_s < 1.5
    assert held.headers["Preference-Applied"] == "wait=3"
    assert held_s >= 2.9
    assert len(job_rows(db)) == 2

"""A submit over real sockets (the engine with its real adapters): a fault known to happen
before any byte left keeps the job QUEUED for another try; one after the request left fails
it ``upstream_unknown`` and never sends it again. The default catalog routes music-2.6 to the
AIMLAPI account at ``SIM_URL``, pointed here at a misbehaving server.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import pytest

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from app.wiring import writer
from config import Settings, load_settings
from tests.sockets import closing_server, free_port, hang_up_server, silent_server
from tests.unit.jobs.support import (
    assert_failed,
    assert_released,
    new_job,
    row,
    step,
)

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


def engine_on(env: dict[str, str], db: Database, base_url: str) -> Engine:
    settings = load_settings({**env, "SIM_URL": base_url, "UPSTREAM_CONNECT_TIMEOUT": "0.5"})
    return Engine(settings, db, transitions=writer(db, settings))


def refused() -> AbstractContextManager[str]:
    return nullcontext(f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize(
    "server", [refused, closing_server], ids=["connection-refused", "tls-handshake-failed"]
)
def test_a_submit_that_never_left_stays_queued_for_another_try(
    env: dict[str, str],
    db: Database,
    settings: Settings,
    server: Callable[[], AbstractContextManager[str]],
) -> None:
    job_id = new_job(db, settings)
    with server() as base:
        assert step(engine_on(env, db, base), db, job_id) == "retry"

    job = row(db, job_id)
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "upstream_unavailable"
    assert (job.submitting_since, job.submit_sent_at) == (None, None)
    assert job.upstream_attempts == 0
    assert_released(job)


@pytest.mark.parametrize(
    "server", [hang_up_server, silent_server], ids=["hung-up-after-the-request", "no-answer"]
)
def test_a_submit_that_left_without_an_answer_fails_upstream_unknown(
    env: dict[str, str],
    db: Database,
    settings: Settings,
    server: Callable[[], AbstractContextManager[str]],
) -> None:
    job_id = new_job(db, settings)
    with server() as base:
        assert step(engine_on(env, db, base), db, job_id) == "failed"

    job = row(db, job_id)
    assert_failed(job, "upstream_unknown")
    assert job.submit_sent_at is None
    assert job.upstream_attempts == 1

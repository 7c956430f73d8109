"""A submit over real sockets (the engine with its real adapters): a fault known to happen
before any byte left keeps the job QUEUED for another try; one after the request left fails
it ``upstream_unknown`` and never sends it again. The default catalog routes music-2.6 to the
AIMLAPI account at ``SIM_URL``, pointed here at a misbehaving server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.status import JobStatus
from app.wiring import writer
from config import Settings, load_settings
from tests.conftest import wait_for
from tests.sockets import (
    Relay,
    address,
    closing_server,
    hang_up_server,
    refusing_server,
    silent_server,
)
from tests.unit.jobs.support import (
    assert_released,
    cancel_with_follow_up,
    new_job,
    row,
    step,
)

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


def engine_on(
    env: dict[str, str], db: Database, base_url: str, connect_timeout: float = 0.5
) -> Engine:
    settings = load_settings(
        {**env, "SIM_URL": base_url, "UPSTREAM_CONNECT_TIMEOUT": str(connect_timeout)}
    )
    return Engine(settings, db, transitions=writer(db, settings))


# What the job is after one submit: its status, its error, whether it is marked sent, and how
# many times the upstream may have made the song.
RETRIED = (JobStatus.QUEUED, "upstream_unavailable", None, 0)
UNKNOWN = (JobStatus.FAILED, "upstream_unknown", None, 1)


@pytest.mark.parametrize(
    ("server", "outcome", "after"),
    [
        (refusing_server, "retry", RETRIED),
        (closing_server, "retry", RETRIED),
        (hang_up_server, "failed", UNKNOWN),
        (silent_server, "failed", UNKNOWN),
    ],
    ids=["connection-refused", "tls-handshake-failed", "hung-up-after-the-request", "no-answer"],
)
def test_only_a_submit_that_left_may_fail_upstream_unknown(
    env: dict[str, str],
    db: Database,
    settings: Settings,
    server: Callable[[], AbstractContextManager[str]],
    outcome: str,
    after: tuple[JobStatus, str, None, int],
) -> None:
    job_id = new_job(db, settings)
    with server() as base:
        assert step(engine_on(env, db, base), db, job_id) == outcome

    job = row(db, job_id)
    assert (job.status, job.error_code, job.submit_sent_at, job.upstream_attempts) == after
    assert job.submitting_since is None
    assert_released(job)


def test_a_job_cancelled_before_its_request_left_is_never_sent(
    env: dict[str, str], db: Database, settings: Settings
) -> None:
    seen: list[bytes] = []
    with hang_up_server() as base:
        # The upstream's address completes no connect until the gate opens.
        gate = Relay(address(base), gated=True, on_request=lambda data: bool(seen.append(data)))
        job_id = new_job(db, settings)
        engine = engine_on(env, db, f"http://127.0.0.1:{gate.port}", connect_timeout=10)
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(step(engine, db, job_id)))
        worker.start()
        # The job has its account's slot and its connection is being made: the client cancels.
        wait_for(lambda: row(db, job_id).submitting_since is not None, 10)
        cancel_with_follow_up(db, job_id)
        gate.open_gate()
        worker.join(timeout=30)
        gate.close()

    assert outcome == ["lost"]
    assert seen == []
    job = row(db, job_id)
    assert job.status == JobStatus.CANCELLED
    # Nothing reached the upstream: nothing is followed there, and the slot is free.
    assert (job.upstream_followup, job.next_action_at, job.submit_sent_at) == (None, None, None)
    assert job.upstream_attempts == 0
    assert_released(job)

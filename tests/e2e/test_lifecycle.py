"""End to end on real Postgres, Redis, Celery worker and scheduler processes, and the simulator.

The API runs in-process (Flask's test client) against the same database the worker uses;
the worker and scheduler are real child processes, so they can be killed with SIGKILL.
"""

from __future__ import annotations

import io
import time
import wave
from typing import Any

import pytest
import requests

from app.jobs.models import Job
from tests.conftest import (
    Processes,
    clear_redis,
    job_rows,
    sim_record,
    wait_for,
)
from tests.e2e.support import claim_by_hand, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]


def submits_per_job(sim: str, db: Any) -> dict[str, int]:
    """How many generations the simulator created for each job (by its generation id)."""
    generations = {g["id"]: g for g in sim_record(sim)["generations"]}
    return {
        job.id: generations[job.generation_id]["submit_count"]
        if job.generation_id in generations
        else 0
        for job in job_rows(db)
    }


@pytest.fixture
def stack(procs: Processes, sim: str) -> Processes:
    procs.worker()
    procs.scheduler()
    return procs


def test_job_reaches_succeeded_with_stored_playable_audio(
    client: Any, db: Any, api_key: str, sim: str, stack: Processes
) -> None:
    job_id = submit(client, api_key, audio_setting={"sample_rate": 24000, "format": "wav"})
    job = wait_terminal(client, api_key, [job_id], timeout=30)[job_id]
    assert job["status"] == "SUCCEEDED", job
    assert job["error"] is None
    assert job["upstream"] == {"provider": "aimlapi", "account": "sim-aimlapi", "attempts": 1}
    info = job["audio_info"]
    assert info["format"] == "wav" and info["sample_rate"] == 24000
    assert info["duration_ms"] == 2000 and info["size"] > 1000

    # The audio link is Chorus's own copy: it works with the simulator gone.
    requests.post(f"{sim}/_sim/reset", timeout=5)
    audio = client.get(job["audio"].replace("http://localhost", ""))
    assert audio.status_code == 200 and audio.mimetype == "audio/wav"
    with wave.open(io.BytesIO(audio.data)) as track:
        assert track.getframerate() == 24000
        assert track.getnframes() / track.getframerate() == pytest.approx(2.0, abs=0.01)
    assert len(audio.data) == info["size"]
    # A tampered link is refused.
    assert client.get(job["audio"].replace("http://localhost", "") + "x").status_code == 404


# Two unreadable answers, not three: the third's backoff (2-4 s), with polls held up behind
# the hung ones on a busy machine, once reached the 12 s deadline first.
@pytest.mark.env(
    JOB_DEADLINE_SECONDS="12",
    SUBMIT_MAX_ATTEMPTS="2",
    INVALID_RESPONSE_LIMIT="2",
    UPSTREAM_READ_TIMEOUT="2",
)
def test_upstream_faults_end_as_documented(
    client: Any, db: Any, api_key: str, sim: str, procs: Processes
) -> None:
    cases = {
        "[sim:error]": ("FAILED", "upstream_failed"),
        "[sim:moderated]": ("FAILED", "content_moderated"),
        "[sim:garbage]": ("FAILED", "upstream_invalid_response"),
        "[sim:unknown-status]": ("SUCCEEDED", None),
        "[sim:poll-5xx]": ("FAILED", "deadline_exceeded"),
        "[sim:never]": ("FAILED", "deadline_exceeded"),
        "[sim:submit-5xx]": ("FAILED", "upstream_unavailable"),
        "[sim:submit-401]": ("FAILED", "upstream_auth_failed"),
        "[sim:submit-429]": ("FAILED", "upstream_rate_limited"),
        "[sim:submit-hang=6]": ("FAILED", "upstream_unknown"),
        "[sim:poll-hang=4]": ("FAILED", "deadline_exceeded"),  # every poll times out (2 s)
        "[sim:poll-hang=1]": ("SUCCEEDED", None),  # slow, but inside the timeout
    }
    ids = {marker: submit(client, api_key, f"Calm piano {marker}") for marker in cases}
    procs.worker(concurrency=2)
    procs.scheduler()
    jobs = wait_terminal(client, api_key, list(ids.values()), timeout=40)
    for marker, (status, code) in cases.items():
        job = jobs[ids[marker]]
        assert job["status"] == status, (marker, job)
        assert (job["error"] or {}).get("code") == code, (marker, job)
        if code:
            assert job["error"]["message"], marker
    # The hung submit created a generation upstream; it was never sent a second time.
    hung = next(g for g in sim_record(sim)["generations"] if "[sim:submit-hang=6]" in g["prompt"])
    assert hung["submit_count"] == 1
    record = sim_record(sim)["requests"]
    submits = [r for r in record if r["kind"] == "submit" and "submit-hang" in str(r)]
    assert len(submits) <= 1


@pytest.mark.env(LEASE_SECONDS="6", UPSTREAM_READ_TIMEOUT="6")
def test_worker_killed_mid_job_every_job_still_ends_once(
    client: Any, db: Any, api_key: str, sim: str, procs: Processes
) -> None:
    polling = [
        submit(client, api_key, f"Song {i} [sim:latency=2] [sim:poll-hang=4]") for i in range(6)
    ]
    submitting = [submit(client, api_key, f"Song {i} [sim:submit-hang=4]") for i in range(4)]
    procs.worker(name="doomed")
    procs.scheduler()
    # Wait until the worker is inside the upstream calls (submits hung, polls hung), then kill -9.
    wait_for(
        lambda: sum(1 for j in job_rows(db) if j.status == "RUNNING") >= 6, 20, message="running"
    )
    time.sleep(2.5)
    killed_at = time.monotonic()
    procs.kill("doomed")
    procs.worker(name="rescuer")
    jobs = wait_terminal(client, api_key, polling + submitting, timeout=60)
    assert time.monotonic() - killed_at < 60
    for job_id in polling:
        assert jobs[job_id]["status"] == "SUCCEEDED", jobs[job_id]
    for job_id in submitting:
        # Killed while the upstream held its submit: it may exist upstream, so it is never
        # sent again; the job ends FAILED with a clear code (or SUCCEEDED if the answer landed first).
        assert jobs[job_id]["status"] in {"FAILED", "SUCCEEDED"}
        if jobs[job_id]["status"] == "FAILED":
            assert jobs[job_id]["error"]["code"] == "upstream_unknown"
    generations = sim_record(sim)["generations"]
    assert len(generations) == 10
    assert all(g["submit_count"] == 1 for g in generations)


def test_duplicated_and_lost_messages_neither_repeat_nor_lose_work(
    client: Any,
    db: Any,
    api_key: str,
    sim: str,
    procs: Processes,
    settings: Any,
    env: dict[str, str],
) -> None:
    from workers import make_celery

    ids = [submit(client, api_key, f"Track {i}") for i in range(8)]
    claims = claim_by_hand(settings, db, ids)
    celery = make_celery(settings)
    duplicated, lost = claims[:4], claims[4:]
    for _ in range(5):  # every message for the first four jobs, five times over
        celery.send_task("chorus.submit_jobs", args=([[c.job_id, c.token] for c in duplicated],))
    # ...and the messages for the other four are never sent at all.
    procs.worker()
    wait_for(
        lambda: all(
            j.status == "RUNNING" for j in job_rows(db) if j.id in {c.job_id for c in duplicated}
        ),
        20,
        message="duplicated jobs running",
    )
    # Without the sweeper nobody knows about the lost ones: they are still waiting.
    assert {j.status for j in job_rows(db) if j.id in {c.job_id for c in lost}} == {"QUEUED"}
    procs.scheduler()  # the sweeper now rescues them once their lease lapses
    jobs = wait_terminal(client, api_key, ids, timeout=40)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    assert submits_per_job(sim, db) == dict.fromkeys(ids, 1)
    assert len(sim_record(sim)["generations"]) == 8


def test_redis_flushed_mid_run_loses_nothing(
    client: Any, db: Any, api_key: str, sim: str, stack: Processes, redis_url: str
) -> None:
    ids = [submit(client, api_key, f"Tune {i} [sim:latency=2]") for i in range(10)]
    wait_for(lambda: any(j.status == "RUNNING" for j in job_rows(db)), 20, message="running")
    clear_redis(redis_url)  # every key of this run's broker and limits, as FLUSHDB would
    ids += [submit(client, api_key, f"Late tune {i}") for i in range(5)]
    jobs = wait_terminal(client, api_key, ids, timeout=60)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), {
        k: v["status"] for k, v in jobs.items()
    }
    assert all(n == 1 for n in submits_per_job(sim, db).values())


def test_polls_follow_expected_duration(
    client: Any, db: Any, api_key: str, sim: str, stack: Processes
) -> None:
    ids = [submit(client, api_key, f"Paced {i}") for i in range(5)]
    wait_terminal(client, api_key, ids, timeout=30)
    for job in job_rows(db):
        assert job.status == "SUCCEEDED"
        # 0.6 ± 0.1 s upstream, expected 0.6 ± 0.2: a handful of polls, not a busy loop.
        assert 1 <= job.poll_count <= 4, job.poll_count
        assert isinstance(job, Job)

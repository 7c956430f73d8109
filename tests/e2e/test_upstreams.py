"""Every upstream protocol end to end: API → worker (→ sync worker) → simulator → Chorus's copy.

Real Postgres, Redis, Celery worker, sync worker and scheduler processes, and the simulator speaking
AIMLAPI, Apilaplas (AIMLAPI's protocol), MiniMax (synchronous) and useapi.net. The catalog is
the default one (``config/catalog.yaml``); a test that needs other account settings changes the
``upstream_accounts`` rows before it starts the workers (they cache account rows for seconds).
"""

from __future__ import annotations

import datetime as dt
import io
import time
import wave
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests
import sqlalchemy as sa

from app.catalog.models import AccountState, Model, Route, UpstreamAccount
from app.db import Database, utcnow
from app.jobs.accounts import BREAKER_THRESHOLD, PROBE_INTERVAL, Accounts
from app.jobs.models import Job
from app.jobs.upstreams import SIM_KEY
from app.sim.audio import DEFAULT_SAMPLE_RATE
from tests.api.test_reference_audio import files, gate  # noqa: F401 - fixtures
from tests.conftest import REDIS_PREFIX, Processes, job_rows, sim_record, wait_for
from tests.e2e.support import TERMINAL, read, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("catalog")]

# How the simulator names the accounts Chorus's default catalog uses: the bearer key, and for
# useapi "<bearer key>|<the account field>".
USEAPI_1, USEAPI_2 = f"{SIM_KEY}|account-1", f"{SIM_KEY}|account-2"


# ------------------------------------------------------------------ helpers


def submit_to(client: Any, key: str, model: str, prompt: str, **extra: Any) -> str:
    return submit(client, key, prompt, model=model, **extra)


def reference_for(model: str, server: str) -> dict[str, str]:
    """minimax-music needs a reference track (checked at submit, so served locally)."""
    return {"reference_audio_url": f"{server}/long.wav"} if model == "minimax-music" else {}


def set_accounts(db: Database, where: Any, **values: Any) -> None:
    """Change upstream account rows; do it before starting workers, which cache them."""
    with db.transaction() as session:
        session.execute(sa.update(UpstreamAccount).where(where).values(**values))


def breaker(db: Database, account_id: str) -> AccountState | None:
    with db.session() as session:
        return session.get(AccountState, account_id)


def end_cool_down(db: Database, account_id: str = "sim-minimax") -> None:
    """Move an open breaker's cool-down into the past instead of waiting for it."""
    set_cool_down(db, utcnow() - dt.timedelta(seconds=1), account_id)


def set_cool_down(db: Database, until: dt.datetime, account_id: str = "sim-minimax") -> None:
    with db.transaction() as session:
        session.execute(
            sa.update(AccountState)
            .where(AccountState.account_id == account_id)
            .values(open_until=until)
        )


def generations_for(sim: str, text: str) -> list[dict[str, Any]]:
    return [g for g in sim_record(sim)["generations"] if text in g["prompt"]]


def submit_requests(record: dict[str, Any], text: str) -> list[dict[str, Any]]:
    return [r for r in record["requests"] if r["kind"] == "submit" and text in (r["prompt"] or "")]


def sent_and_made(record: dict[str, Any], prompts: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per case, the submits the simulator received with the case's whole prompt, and the
    generations it made for it."""
    return {
        case: (
            sum(r["kind"] == "submit" and r["prompt"] == prompt for r in record["requests"]),
            sum(g["prompt"] == prompt for g in record["generations"]),
        )
        for case, prompt in prompts.items()
    }


def account_stats(record: dict[str, Any], protocol: str, account: str) -> dict[str, Any]:
    rows = [a for a in record["accounts"] if (a["protocol"], a["account"]) == (protocol, account)]
    assert len(rows) == 1, record["accounts"]
    return rows[0]


def download_wav(client: Any, job: dict[str, Any]) -> tuple[bytes, int, float]:
    """Fetch the job's audio from Chorus's own link; returns (bytes, rate, seconds)."""
    link = job["urls"]["audio"]
    assert link, job
    response = client.get(link.replace("http://localhost", ""))
    assert response.status_code == 200, response.status_code
    assert response.mimetype == "audio/wav"
    with wave.open(io.BytesIO(response.data)) as track:
        rate = track.getframerate()
        seconds = track.getnframes() / rate
    assert len(response.data) == job["audio_info"]["size"]
    return response.data, rate, seconds


def assert_stored_audio(
    client: Any, job: dict[str, Any], sample_rate: int = DEFAULT_SAMPLE_RATE
) -> bytes:
    assert job["status"] == "SUCCEEDED", job
    assert job["error"] is None
    info = job["audio_info"]
    assert info["format"] == "wav" and info["sample_rate"] == sample_rate, info
    assert info["duration_ms"] == 2000 and info["size"] > 1000, info
    data, rate, seconds = download_wav(client, job)
    assert rate == sample_rate
    assert seconds == pytest.approx(2.0, abs=0.01)
    return data


def assert_outcomes(
    jobs: dict[str, dict[str, Any]],
    ids: dict[str, str],
    cases: dict[str, tuple[str, str | None]],
    account: str | None = None,
) -> None:
    wrong = {}
    for marker, (status, code) in cases.items():
        job = jobs[ids[marker]]
        got = (job["status"], (job["error"] or {}).get("code"))
        if got != (status, code):
            wrong[marker] = (got, job["error"])
        elif code is not None and not job["error"]["message"]:
            wrong[marker] = (got, "no error message")
        elif account is not None and job["upstream"]["account"] != account:
            wrong[marker] = (got, job["upstream"])
    assert not wrong, wrong


# ------------------------------------------------------------------ 1. one happy path per protocol


@pytest.mark.parametrize(
    ("model", "provider", "account", "protocol", "sim_account"),
    [
        ("music-2.6", "aimlapi", "sim-aimlapi", "aimlapi", SIM_KEY),
        # Apilaplas speaks AIMLAPI's protocol; the model takes a reference track.
        ("minimax-music", "apilaplas", "sim-apilaplas", "aimlapi", SIM_KEY),
        # useapi.net: the first of the two web accounts takes it.
        ("music-1.5", "useapi", "sim-useapi-1", "useapi", USEAPI_1),
    ],
    ids=["aimlapi", "apilaplas", "useapi"],
)
@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_async_protocol_reaches_succeeded_with_stored_audio(
    client: Any,
    db: Database,
    api_key: str,
    sim: str,
    procs: Processes,
    files: str,  # noqa: F811 - the fixture
    model: str,
    provider: str,
    account: str,
    protocol: str,
    sim_account: str,
) -> None:
    procs.worker()
    procs.scheduler()
    job_id = submit_to(
        client, api_key, model, f"Bright synth pop for {provider}", **reference_for(model, files)
    )
    job = wait_terminal(client, api_key, [job_id], timeout=40)[job_id]
    assert job["upstream"] == {"provider": provider, "account": account, "attempts": 1}
    assert_stored_audio(client, job)

    with db.session() as session:
        upstream_model = session.scalar(sa.select(Model.upstream_model).where(Model.name == model))
    (generation,) = generations_for(sim, f"for {provider}")
    assert generation["protocol"] == protocol
    assert generation["account"] == sim_account
    assert generation["model"] == upstream_model
    assert generation["submit_count"] == 1
    (row,) = job_rows(db)
    assert row.generation_id == generation["id"]
    # The upstream link is gone; Chorus's copy is not.
    requests.post(f"{sim}/_sim/reset", timeout=5)
    download_wav(client, read(client, api_key, job_id))


def test_minimax_runs_on_the_sync_worker_in_url_and_hex(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes, env: dict[str, str]
) -> None:
    formats = {
        "url": {"output_format": "url"},
        "hex": {"output_format": "hex"},
        # Some answers carry the link in data.audio_url instead of data.audio.
        "url-field": {"output_format": "url"},
    }
    prompts = {
        "url": "Dreamy city pop at dusk (url)",
        "hex": "Dreamy city pop at dusk (hex)",
        "url-field": "Dreamy city pop at dusk [sim:audio-url-field]",
    }
    ids = {
        name: submit_to(
            client,
            api_key,
            "music-2.0",
            prompts[name],
            audio_setting={"sample_rate": 32000, "format": "wav"},
            **extra,
        )
        for name, extra in formats.items()
    }
    procs.worker()
    procs.scheduler()
    # Without a sync worker the normal worker only hands the jobs over: their messages wait on
    # the sync queue, and nothing reaches MiniMax.
    broker = redis.Redis.from_url(env["REDIS_URL"])
    wait_for(
        lambda: (
            broker.llen(f"{REDIS_PREFIX}chorus.sync") >= len(ids)
            and all(j.status == "QUEUED" for j in job_rows(db))
        ),
        30,
        message="the MiniMax jobs handed to the sync queue",
    )
    time.sleep(1.0)
    assert {j.status for j in job_rows(db)} == {"QUEUED"}
    assert not [r for r in sim_record(sim)["requests"] if r["kind"] == "submit"]

    procs.sync_worker()
    jobs = wait_terminal(client, api_key, list(ids.values()), timeout=40)
    for name, job_id in ids.items():
        job = jobs[job_id]
        assert job["upstream"] == {
            "provider": "minimax",
            "account": "sim-minimax",
            "attempts": 1,
        }, name
        data = assert_stored_audio(client, job, sample_rate=32000)
        if name == "hex":
            # MiniMax's hex output: the job object carries the audio itself, hex-encoded.
            assert bytes.fromhex(job["audio"]) == data
        else:
            assert job["audio"] == job["urls"]["audio"]

    record = sim_record(sim)
    assert sorted(g["protocol"] for g in record["generations"]) == ["minimax"] * 3
    assert all(g["model"] == "music-2.0" and g["submit_count"] == 1 for g in record["generations"])
    assert len(submit_requests(record, "Dreamy city pop")) == 3
    # The calls were made by the sync worker: it ran sync_submit_jobs, the normal worker never did.
    assert "Task chorus.sync_submit_jobs[" in procs.log("sync")
    assert "Task chorus.submit_jobs[" in procs.log("worker")
    assert "Task chorus.sync_submit_jobs[" not in procs.log("worker")


# ------------------------------------------------------------------ 2. faults per protocol


@pytest.mark.env(JOB_DEADLINE_SECONDS="40", SUBMIT_MAX_ATTEMPTS="2")
def test_minimax_faults_end_as_documented(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # A short read timeout on the MiniMax account, so a held answer becomes a read timeout.
    set_accounts(db, UpstreamAccount.id == "sim-minimax", read_timeout=2.0)
    # marker → (status, error code, submits MiniMax saw, generations MiniMax made)
    cases: dict[str, tuple[str, str | None, int, int]] = {
        "[sim:base-resp=1026]": ("FAILED", "content_moderated", 1, 1),
        "[sim:moderated]": ("FAILED", "content_moderated", 1, 1),
        "[sim:base-resp=2013]": ("FAILED", "invalid_request", 1, 1),
        "[sim:base-resp=1004]": ("FAILED", "upstream_auth_failed", 1, 1),
        "[sim:base-resp=1008]": ("FAILED", "upstream_out_of_credits", 1, 1),
        "[sim:base-resp=4242]": ("FAILED", "upstream_failed", 1, 1),
        # A rate limit is retried on the same account (it does not trip the breaker, so the
        # job never falls back), then fails after SUBMIT_MAX_ATTEMPTS.
        "[sim:base-resp=1002]": ("FAILED", "upstream_rate_limited", 2, 2),
        # Gateway-shaped errors (HTTP 4xx/5xx with {"type": "error", ...}) answer at once.
        "[sim:http=422]": ("FAILED", "content_moderated", 1, 0),
        "[sim:http=402]": ("FAILED", "upstream_out_of_credits", 1, 0),
        "[sim:submit-401]": ("FAILED", "upstream_auth_failed", 1, 0),
        "[sim:submit-5xx]": ("FAILED", "upstream_unavailable", 2, 0),
        # The song exists (and is billed) but the answer comes after the read timeout, or
        # cannot be read, or the gateway timed out (504) while MiniMax may still be making
        # it: never sent again.
        "[sim:http=504]": ("FAILED", "upstream_unknown", 1, 0),
        # music-2.0 streams (early audio): the final event held past the read timeout, after
        # the pieces came, breaks the stream off. Equally never sent again.
        "[sim:submit-hang=4]": ("FAILED", "upstream_stream_incomplete", 1, 1),
        "[sim:garbage]": ("FAILED", "upstream_unknown", 1, 1),
        "": ("SUCCEEDED", None, 1, 1),
    }
    prompts = {marker: f"Minimax case {i} {marker}" for i, marker in enumerate(cases)}
    ids = {m: submit_to(client, api_key, "music-2.0", prompt) for m, prompt in prompts.items()}
    procs.worker()
    procs.sync_worker()
    procs.scheduler()
    jobs = wait_terminal(client, api_key, list(ids.values()), timeout=60)
    assert_outcomes(
        jobs, ids, {m: (s, c) for m, (s, c, _, _) in cases.items()}, account="sim-minimax"
    )
    assert_stored_audio(client, jobs[ids[""]])

    record = sim_record(sim)
    assert sent_and_made(record, prompts) == {m: (n, g) for m, (_, _, n, g) in cases.items()}
    assert all(g["protocol"] == "minimax" for g in record["generations"])
    # Four transient failures (two 503s, a 504, a timeout) stay under the breaker's threshold.
    state = breaker(db, "sim-minimax")
    assert state is None or state.open_until is None


@pytest.mark.env(JOB_DEADLINE_SECONDS="60", SUBMIT_MAX_ATTEMPTS="2", INVALID_RESPONSE_LIMIT="2")
def test_useapi_faults_end_as_documented(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    set_accounts(db, UpstreamAccount.provider == "useapi", read_timeout=2.0)
    # marker → (status, error code, submits useapi saw, generations useapi made)
    cases: dict[str, tuple[str, str | None, int, int]] = {
        "[sim:moderated-prompt]": ("FAILED", "content_moderated", 1, 0),
        "[sim:moderated]": ("FAILED", "content_moderated", 1, 1),
        "[sim:post-moderated=6]": ("SUCCEEDED", None, 1, 1),
        "[sim:garbage]": ("FAILED", "upstream_invalid_response", 1, 1),
        "[sim:unknown-status]": ("SUCCEEDED", None, 1, 1),
        "[sim:submit-5xx]": ("FAILED", "upstream_unavailable", 2, 0),
        "[sim:submit-401]": ("FAILED", "upstream_auth_failed", 1, 0),
        "[sim:submit-429]": ("FAILED", "upstream_rate_limited", 2, 0),
        "[sim:submit-hang=4]": ("FAILED", "upstream_unknown", 1, 1),
        "": ("SUCCEEDED", None, 1, 1),
    }
    prompts = {marker: f"Useapi case {i} {marker}" for i, marker in enumerate(cases)}
    ids = {m: submit_to(client, api_key, "music-1.5", prompt) for m, prompt in prompts.items()}
    procs.worker()
    procs.scheduler()
    jobs = wait_terminal(client, api_key, list(ids.values()), timeout=80)
    assert_outcomes(jobs, ids, {m: (s, c) for m, (s, c, _, _) in cases.items()})
    record = sim_record(sim)
    assert sent_and_made(record, prompts) == {m: (n, g) for m, (_, _, n, g) in cases.items()}
    # Refused at submit: the job never ran.
    assert jobs[ids["[sim:moderated-prompt]"]]["started_at"] is None
    # Chorus never sent a song to a busy account.
    useapi_accounts = [a for a in record["accounts"] if a["protocol"] == "useapi"]
    assert {a["account"] for a in useapi_accounts} <= {USEAPI_1, USEAPI_2}
    for stats in useapi_accounts:
        assert stats["max_concurrent"] == 1 and stats["rejected_busy"] == 0, stats

    # Struck after completion: the upstream link dies, the job stays SUCCEEDED and Chorus still
    # serves its own copy.
    struck_id = ids["[sim:post-moderated=6]"]
    assert_stored_audio(client, jobs[struck_id])
    (struck,) = [g for g in record["generations"] if "post-moderated" in g["prompt"]]
    audio_link = f"{sim}/_sim/audio/{struck['id']}.wav"
    wait_for(
        lambda: requests.get(audio_link, timeout=5).status_code == 404,
        15,
        interval=0.25,
        message="the upstream to strike the song",
    )
    status = requests.get(
        f"{sim}/v1/minimax/music/{quote(struck['id'], safe='')}",
        headers={"Authorization": f"Bearer {SIM_KEY}"},
        timeout=5,
    ).json()
    assert status["status"] == 4 and status["audioURL"] is None
    after = read(client, api_key, struck_id)
    assert after["status"] == "SUCCEEDED"
    assert_stored_audio(client, after)

    # 5xx on poll: retried, and the job still succeeds.
    late = submit_to(client, api_key, "music-1.5", "Useapi poll faults [sim:latency=3]")
    wait_for(lambda: read(client, api_key, late)["status"] == "RUNNING", 20, message="running")
    requests.post(
        f"{sim}/_sim/faults", json={"poll": [{"status": 502}, {"status": 503}]}, timeout=5
    ).raise_for_status()
    job = wait_terminal(client, api_key, [late], timeout=40)[late]
    assert_stored_audio(client, job)
    (generation,) = generations_for(sim, "Useapi poll faults")
    polls = [
        r["status_code"]
        for r in sim_record(sim)["requests"]
        if r["kind"] == "poll" and r["generation_id"] == generation["id"]
    ]
    assert 502 in polls and 503 in polls and polls[-1] == 200, polls


def test_useapi_song_struck_before_its_download_fails_content_moderated(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # The song finishes at 0.3 s and is struck at 0.4 s; Chorus's first poll (about 0.9 s) is
    # answered "completed" with the link once more (a one-shot status fault), as a poll that
    # lands just before the strike would be. The link is dead by the time Chorus fetches it.
    requests.post(
        f"{sim}/_sim/faults", json={"poll": [{"status_word": "2"}]}, timeout=5
    ).raise_for_status()
    job_id = submit_to(
        client,
        api_key,
        "music-1.5",
        "Struck before the download [sim:latency=0.3] [sim:post-moderated=0.1]",
    )
    procs.worker()
    procs.scheduler()
    job = wait_terminal(client, api_key, [job_id], timeout=40)[job_id]
    (generation,) = generations_for(sim, "Struck before the download")
    record = sim_record(sim)
    seen = [
        (r["kind"], r["status_code"])
        for r in record["requests"]
        if r["generation_id"] == generation["id"]
    ]
    # Chorus was told "completed" (status 2), then the link answered 404.
    assert seen == [("submit", 200), ("poll", 200), ("audio", 404)], seen
    assert job["status"] == "FAILED", job
    assert job["error"]["code"] == "content_moderated", job["error"]


@pytest.mark.env(
    JOB_DEADLINE_SECONDS="40",
    SUBMIT_MAX_ATTEMPTS="2",
    INVALID_RESPONSE_LIMIT="2",
    ALLOW_PRIVATE_URLS="1",
)
def test_aimlapi_and_apilaplas_faults_end_as_documented(
    client: Any,
    db: Database,
    api_key: str,
    sim: str,
    procs: Processes,
    files: str,  # noqa: F811 - the fixture
) -> None:
    cases: dict[str, tuple[str, str | None]] = {
        "[sim:error]": ("FAILED", "upstream_failed"),
        "[sim:moderated]": ("FAILED", "content_moderated"),
        "[sim:garbage]": ("FAILED", "upstream_invalid_response"),
        "[sim:unknown-status]": ("SUCCEEDED", None),
        "[sim:submit-5xx]": ("FAILED", "upstream_unavailable"),
        "[sim:submit-401]": ("FAILED", "upstream_auth_failed"),
        "": ("SUCCEEDED", None),
    }
    routes = {"music-2.6": "sim-aimlapi", "minimax-music": "sim-apilaplas"}
    ids = {
        model: {
            marker: submit_to(
                client, api_key, model, f"{model} case {i} {marker}", **reference_for(model, files)
            )
            for i, marker in enumerate(cases)
        }
        for model in routes
    }
    procs.worker()
    procs.scheduler()
    every = [job_id for per_model in ids.values() for job_id in per_model.values()]
    jobs = wait_terminal(client, api_key, every, timeout=60)
    for model, account in routes.items():
        assert_outcomes(jobs, ids[model], cases, account=account)
        assert_stored_audio(client, jobs[ids[model][""]])
    assert all(g["submit_count"] == 1 for g in sim_record(sim)["generations"])


# ------------------------------------------------------------------ 3. account limits


def test_useapi_accounts_take_one_song_at_a_time(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    ids = [
        submit_to(client, api_key, "music-1.5", f"Folk ballad {i} [sim:latency=1]")
        for i in range(10)
    ]
    procs.worker()
    procs.scheduler()
    saw_waiting = False
    over_limit: list[dict[str, int]] = []

    def sample() -> bool:
        nonlocal saw_waiting
        rows = job_rows(db)
        statuses = {j.status for j in rows}
        assert "FAILED" not in statuses, [(j.id, j.error_code, j.error_message) for j in rows]
        if "QUEUED" in statuses and "RUNNING" in statuses:
            saw_waiting = True
        holding: dict[str, int] = {}
        for j in rows:
            if j.status == "RUNNING" or (j.status == "QUEUED" and j.submitting_since is not None):
                holding[j.account_id or "?"] = holding.get(j.account_id or "?", 0) + 1
        if any(n > 1 for n in holding.values()):
            over_limit.append(holding)
        return all(j.status in TERMINAL for j in rows)

    wait_for(sample, 90, interval=0.1, message="ten useapi jobs to end")
    jobs = wait_terminal(client, api_key, ids, timeout=5)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    assert saw_waiting, "no job was seen waiting QUEUED while another ran"
    assert not over_limit, over_limit

    record = sim_record(sim)
    for account in (USEAPI_1, USEAPI_2):
        stats = account_stats(record, "useapi", account)
        assert stats["max_concurrent"] == 1, stats
        assert stats["rejected_busy"] == 0, stats
    used = {j["upstream"]["account"] for j in jobs.values()}
    assert used == {"sim-useapi-1", "sim-useapi-2"}
    assert len(record["generations"]) == 10
    assert all(g["submit_count"] == 1 for g in record["generations"])
    # Every parked job was woken: no job stayed QUEUED long after a slot freed.
    assert all(j.waiting_since is None for j in job_rows(db))


def test_minimax_never_holds_more_calls_than_max_in_flight(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    set_accounts(db, UpstreamAccount.id == "sim-minimax", max_in_flight=3)
    procs.worker()
    procs.sync_worker()
    procs.scheduler()

    # With the default routes, a job that finds MiniMax full takes the next route (AIMLAPI).
    first = [
        submit_to(client, api_key, "music-2.0", f"Disco anthem {i} [sim:latency=1.5]")
        for i in range(12)
    ]
    jobs = wait_terminal(client, api_key, first, timeout=60)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    record = sim_record(sim)
    assert account_stats(record, "minimax", SIM_KEY)["max_concurrent"] <= 3
    served = [j["upstream"]["account"] for j in jobs.values()]
    assert served.count("sim-minimax") >= 3, served
    assert set(served) <= {"sim-minimax", "sim-aimlapi"}
    # Each job made exactly one song, on exactly one upstream.
    for i in range(12):
        assert len(generations_for(sim, f"Disco anthem {i} ")) == 1

    # Without the fallback route every job must go through MiniMax's three slots: they wait.
    with db.transaction() as session:
        music_2_0 = sa.select(Model.id).where(Model.name == "music-2.0").scalar_subquery()
        session.execute(
            sa.delete(Route).where(Route.account_id == "sim-aimlapi", Route.model_id == music_2_0)
        )
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    second = [
        submit_to(client, api_key, "music-2.0", f"Funk groove {i} [sim:latency=1.5]")
        for i in range(12)
    ]
    saw_waiting = False

    def sample() -> bool:
        nonlocal saw_waiting
        rows = [j for j in job_rows(db) if j.id in second]
        with db.session() as session:
            assert Accounts(db).in_flight(session, "sim-minimax") <= 3
        if any(j.waiting_since is not None for j in rows):
            saw_waiting = True
        return all(j.status in TERMINAL for j in rows)

    wait_for(sample, 90, interval=0.1, message="twelve MiniMax jobs to end")
    jobs = wait_terminal(client, api_key, second, timeout=5)
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    assert {j["upstream"]["account"] for j in jobs.values()} == {"sim-minimax"}
    assert saw_waiting
    record = sim_record(sim)
    assert account_stats(record, "minimax", SIM_KEY)["max_concurrent"] == 3
    assert len(record["generations"]) == 12


# ------------------------------------------------------------------ 4. a crashed worker's slot


@pytest.mark.env(UPSTREAM_READ_TIMEOUT="3", LEASE_SECONDS="6")
def test_slot_held_by_a_killed_worker_comes_back(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # One useapi account, one slot. The first submit answers late (the song is made at once),
    # so the worker can be killed while it holds the slot with a submit under way.
    set_accounts(db, UpstreamAccount.id == "sim-useapi-2", enabled=False)
    set_accounts(db, UpstreamAccount.id == "sim-useapi-1", read_timeout=6.0)
    procs.worker(name="doomed")
    procs.scheduler()
    held = submit_to(
        client, api_key, "music-1.5", "Killed mid-submit [sim:submit-hang=4] [sim:latency=0.3]"
    )

    def submit_under_way() -> bool:
        rows = {j.id: j for j in job_rows(db)}
        return rows[held].submitting_since is not None and bool(
            generations_for(sim, "Killed mid-submit")
        )

    wait_for(submit_under_way, 30, message="the first submit to reach useapi")
    queued = submit_to(client, api_key, "music-1.5", "Next in line [sim:latency=0.5]")
    procs.kill("doomed")
    with db.session() as session:
        assert Accounts(db).in_flight(session, "sim-useapi-1") == 1
    rows = {j.id: j for j in job_rows(db)}
    assert rows[held].status == "QUEUED" and rows[held].submitting_since is not None
    assert rows[queued].status == "QUEUED"

    procs.worker(name="rescuer")
    jobs = wait_terminal(client, api_key, [held, queued], timeout=60)
    # The interrupted submit may have made a song: it fails, and is never sent again...
    assert jobs[held]["status"] == "FAILED", jobs[held]
    assert jobs[held]["error"]["code"] == "upstream_unknown"
    # ...and its slot comes back: the next job on that account runs once it is free.
    assert jobs[queued]["upstream"]["account"] == "sim-useapi-1"
    assert_stored_audio(client, jobs[queued])
    rows = {j.id: j for j in job_rows(db)}
    ended, started = rows[held].finished_at, rows[queued].started_at
    assert ended is not None and started is not None
    assert started >= ended
    with db.session() as session:
        assert Accounts(db).in_flight(session, "sim-useapi-1") == 0
    record = sim_record(sim)
    assert len(submit_requests(record, "Killed mid-submit")) == 1
    assert len(submit_requests(record, "Next in line")) == 1
    stats = account_stats(record, "useapi", USEAPI_1)
    assert stats["max_concurrent"] == 1 and stats["rejected_busy"] == 0, stats


# ------------------------------------------------------------------ 5. breaker and fallback


@pytest.mark.env(SUBMIT_MAX_ATTEMPTS="4", JOB_DEADLINE_SECONDS="60")
def test_minimax_breaker_opens_falls_back_and_closes_after_a_probe(
    client: Any, db: Database, api_key: str, sim: str, procs: Processes
) -> None:
    # The next five submits (whichever upstream) answer 503: MiniMax's five first calls.
    requests.post(
        f"{sim}/_sim/faults", json={"submit": [{"status": 503}] * BREAKER_THRESHOLD}, timeout=5
    ).raise_for_status()
    failing = [
        submit_to(client, api_key, "music-2.0", f"Breaker round one, song {i}")
        for i in range(BREAKER_THRESHOLD)
    ]
    procs.worker()
    procs.sync_worker()
    procs.scheduler()

    def opened() -> AccountState | None:
        state = breaker(db, "sim-minimax")
        return state if state is not None and state.open_until is not None else None

    state = wait_for(opened, 30, message="the sim-minimax breaker to open")
    assert state.failures >= BREAKER_THRESHOLD
    assert state.open_until <= utcnow() + PROBE_INTERVAL
    # Held open for this part of the test, however slow the machine: no probe meanwhile.
    set_cool_down(db, utcnow() + dt.timedelta(minutes=5))
    # Nothing was made upstream by those calls, so each job falls back and succeeds.
    jobs = wait_terminal(client, api_key, failing, timeout=40)
    for job in jobs.values():
        assert job["upstream"] == {
            "provider": "aimlapi",
            "account": "sim-aimlapi",
            "attempts": 1,
        }, job
        assert_stored_audio(client, job)

    # While the breaker is open, new jobs go straight to the fallback account.
    during = [
        submit_to(client, api_key, "music-2.0", f"Breaker round two, song {i}") for i in range(3)
    ]
    jobs = wait_terminal(client, api_key, during, timeout=40)
    assert {j["upstream"]["account"] for j in jobs.values()} == {"sim-aimlapi"}
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values())
    record = sim_record(sim)
    minimax_submits = [r for r in record["requests"] if r["path"] == "/v1/music_generation"]
    assert len(minimax_submits) == BREAKER_THRESHOLD
    assert {r["status_code"] for r in minimax_submits} == {503}
    # No job was made twice, or on two upstreams.
    for text in [f"round one, song {i}" for i in range(5)] + [
        f"round two, song {i}" for i in range(3)
    ]:
        (generation,) = generations_for(sim, text)
        assert generation["protocol"] == "aimlapi"

    # After the cool-down (moved into the past here) one probe goes to MiniMax. A failed probe
    # opens the breaker again at once, and its job falls back...
    end_cool_down(db)
    requests.post(f"{sim}/_sim/faults", json={"submit": [{"status": 503}]}, timeout=5)
    failed_probe = submit_to(client, api_key, "music-2.0", "Breaker failed probe song")
    job = wait_terminal(client, api_key, [failed_probe], timeout=40)[failed_probe]
    assert job["upstream"] == {"provider": "aimlapi", "account": "sim-aimlapi", "attempts": 1}, job
    assert_stored_audio(client, job)
    sent = submit_requests(sim_record(sim), "Breaker failed probe")
    assert [(r["path"], r["status_code"]) for r in sent] == [
        ("/v1/music_generation", 503),
        ("/v2/generate/audio", 201),
    ]
    state = breaker(db, "sim-minimax")
    assert state is not None and state.open_until is not None
    assert utcnow() < state.open_until <= utcnow() + PROBE_INTERVAL
    assert state.probe_until is None

    # ...and a successful probe closes it.
    end_cool_down(db)
    probe = submit_to(client, api_key, "music-2.0", "Breaker probe song")
    job = wait_terminal(client, api_key, [probe], timeout=40)[probe]
    assert job["upstream"] == {"provider": "minimax", "account": "sim-minimax", "attempts": 1}
    assert_stored_audio(client, job)
    state = breaker(db, "sim-minimax")
    assert state is not None
    assert (state.failures, state.open_until, state.probe_until) == (0, None, None)
    after = [submit_to(client, api_key, "music-2.0", f"Breaker closed, song {i}") for i in range(2)]
    jobs = wait_terminal(client, api_key, after, timeout=40)
    assert {j["upstream"]["account"] for j in jobs.values()} == {"sim-minimax"}
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values())
    with db.session() as session:
        rows = session.scalars(sa.select(Job)).all()
    assert all(r.status == "SUCCEEDED" for r in rows)

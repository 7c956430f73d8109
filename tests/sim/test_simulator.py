"""The upstream simulator: AIMLAPI protocol shapes, timing, fault injection, record, WAV files."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import wave
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.sim import create_sim_app, sim_state
from app.sim.audio import derive_duration, wav_bytes
from app.sim.data import SimConfig
from app.sim.server import gunicorn_options
from app.sim.state import SimState
from tests.sim.support import (
    FakeClock,
    answered_late,
    generation,
    make_settings,
    record,
    wav_info,
)

API = "/v2/generate/audio"
KEY = "sk-test-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_KEYS = {"message", "path", "requestId", "statusCode", "timestamp"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app() -> Flask:
    return create_sim_app(make_settings())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def submit(client: FlaskClient, prompt: str = "calm piano", **extra: Any) -> Any:
    body = {"model": "minimax/music-2.6", "prompt": prompt, **extra}
    return client.post(API, json=body, headers=AUTH)


def poll(client: FlaskClient, gen_id: str) -> Any:
    return client.get(API, query_string={"generation_id": gen_id}, headers=AUTH)


def created(client: FlaskClient, prompt: str = "calm piano", **extra: Any) -> str:
    resp = submit(client, prompt, **extra)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    gen_id: str = resp.get_json()["id"]
    return gen_id


def assert_aimlapi_error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status
    body: dict[str, Any] = resp.get_json()
    assert set(body) == ERROR_KEYS
    assert body["statusCode"] == status
    assert body["path"] == resp.request.path
    return body


# -- protocol shapes ---------------------------------------------------------------------------


def test_submit_returns_201_queued_with_aimlapi_style_id(client: FlaskClient) -> None:
    resp = submit(client)
    assert resp.status_code == 201
    body = resp.get_json()
    assert set(body) == {"id", "status"}
    assert body["status"] == "queued"
    head, _, model = body["id"].partition(":")
    uuid.UUID(head)  # raises if the prefix is not a UUID
    assert model == "minimax/music-2.6"  # ids may contain ':' and '/'


def test_auth_is_required_on_submit_and_poll(client: FlaskClient) -> None:
    body = {"model": "m", "prompt": "p"}
    assert_aimlapi_error(client.post(API, json=body), 401)
    assert_aimlapi_error(client.post(API, json=body, headers={"Authorization": "Bearer "}), 401)
    assert_aimlapi_error(client.post(API, json=body, headers={"Authorization": "Basic x"}), 401)
    gen_id = created(client)
    assert_aimlapi_error(client.get(API, query_string={"generation_id": gen_id}), 401)
    rows = record(client)["requests"]
    assert [r["status_code"] for r in rows] == [401, 401, 401, 201, 401]
    assert [r["auth"] for r in rows] == [None, None, None, KEY, None]
    assert len(record(client, summary=1)["generations"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "no model"},
        {"model": "m"},
        {"model": "m", "prompt": ""},
        {"model": "m", "prompt": 5},
        {"model": "m", "prompt": "p", "lyrics": ["a"]},
        {"model": "m", "prompt": "p", "audio_setting": {"sample_rate": 22050}},
        {"model": "m", "prompt": "p", "audio_setting": {"sample_rate": [1]}},
        {"model": "m", "prompt": "p", "audio_setting": {"bitrate": 1}},
        {"model": "m", "prompt": "p", "audio_setting": {"format": "ogg"}},
        {
            "model": "m",
            "prompt": "p",
            "audio_setting": {"sample_rate": 16000, "audio_sample_rate": 44100},
        },
        {"model": "m", "prompt": "p [sim:no-such-marker]"},
        {"model": "m", "prompt": "p [sim:latency=soon]"},
        ["not", "an", "object"],
    ],
)
def test_invalid_body_is_400_and_creates_nothing(client: FlaskClient, body: Any) -> None:
    resp = client.post(API, json=body, headers=AUTH)
    err = assert_aimlapi_error(resp, 400)
    assert err["message"].startswith("Body validation error!")
    assert record(client, summary=1)["generations"] == []


def test_non_json_body_is_400(client: FlaskClient) -> None:
    resp = client.post(API, data="model=x", headers={**AUTH, "Content-Type": "text/plain"})
    assert_aimlapi_error(resp, 400)


def test_poll_unknown_id_is_404_and_missing_id_is_400(client: FlaskClient) -> None:
    assert_aimlapi_error(poll(client, "nope:minimax-music"), 404)
    assert_aimlapi_error(client.get(API, headers=AUTH), 400)


def test_unknown_route_answers_in_aimlapi_shape(client: FlaskClient) -> None:
    assert_aimlapi_error(client.get("/v2/nothing-here", headers=AUTH), 404)
    assert_aimlapi_error(client.delete(API, headers=AUTH), 405)


# -- status over time --------------------------------------------------------------------------


def test_status_progresses_queued_generating_completed(
    tclient: FlaskClient, clock: FakeClock
) -> None:
    gen_id = created(tclient, "lofi [sim:latency=10]")
    first = poll(tclient, gen_id).get_json()
    assert first == {"id": gen_id, "status": "queued", "audio_file": None, "error": None}
    clock.advance(0.99)
    assert poll(tclient, gen_id).get_json()["status"] == "queued"  # first 10% of the latency
    clock.advance(0.02)
    assert poll(tclient, gen_id).get_json()["status"] == "generating"
    clock.advance(8.98)
    assert poll(tclient, gen_id).get_json()["status"] == "generating"
    assert generation(tclient, gen_id)["first_completed_seen_at"] is None
    clock.advance(0.02)
    done = poll(tclient, gen_id).get_json()
    assert done["status"] == "completed"
    assert done["error"] is None
    assert done["audio_file"]["url"] == (
        f"http://localhost/_sim/audio/{quote(gen_id, safe='')}.wav"
    )
    row = generation(tclient, gen_id)
    assert row["latency"] == 10.0
    assert row["ready_at"] == row["created_at"] + 10.0
    assert row["poll_count"] == 5
    assert row["first_completed_seen_at"] == clock.now
    assert row["outcome"] == "completed"
    assert record(tclient, summary=1)["counts"]["in_flight"] == 0


def test_status_progresses_in_real_time(client: FlaskClient) -> None:
    gen_id = created(client, "lofi [sim:latency=0.3]")
    assert poll(client, gen_id).get_json()["status"] in {"queued", "generating"}
    time.sleep(0.35)
    assert poll(client, gen_id).get_json()["status"] == "completed"


def test_first_completed_seen_at_is_the_first_completed_poll(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:latency=0]")
    assert poll(client, gen_id).get_json()["status"] == "completed"
    seen = generation(client, gen_id)["first_completed_seen_at"]
    time.sleep(0.02)
    poll(client, gen_id)
    row = generation(client, gen_id)
    assert row["first_completed_seen_at"] == seen
    assert row["poll_count"] == 2


def test_latency_is_drawn_within_jitter_and_clamped_at_zero(client: FlaskClient) -> None:
    client.post("/_sim/config", json={"latency": 0.3, "jitter": 0.1})
    ids = [created(client, f"song {i}") for i in range(30)]
    latencies = [generation(client, i)["latency"] for i in ids]
    assert all(0.2 <= x <= 0.4 for x in latencies)
    assert len(set(latencies)) > 1  # really drawn, not fixed
    client.post("/_sim/config", json={"latency": 0.0, "jitter": 5.0})
    more = [created(client, f"other {i}") for i in range(20)]
    assert all(0.0 <= generation(client, i)["latency"] <= 5.0 for i in more)


# -- audio -------------------------------------------------------------------------------------


def test_completed_audio_is_a_valid_wav_matching_the_record(client: FlaskClient) -> None:
    lyrics = "[Verse]\nline one\n\nline two\nline three\n"  # 4 non-empty lines -> 10 s
    gen_id = created(
        client, "x [sim:latency=0]", lyrics=lyrics, audio_setting={"sample_rate": 16000}
    )
    url = poll(client, gen_id).get_json()["audio_file"]["url"]
    resp = client.get(urlsplit(url).path)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "audio/wav"
    data = resp.get_data()
    assert int(resp.headers["Content-Length"]) == len(data)
    channels, width, rate, frames = wav_info(data)
    assert (channels, width, rate) == (1, 2, 16000)
    assert frames / rate == pytest.approx(10.0)
    row = generation(client, gen_id)
    assert (row["audio_seconds"], row["sample_rate"]) == (10.0, 16000)
    downloads = [r for r in record(client)["requests"] if r["kind"] == "audio"]
    assert downloads[0]["generation_id"] == gen_id
    assert downloads[0]["status_code"] == 200
    assert downloads[0]["auth"] is None  # the audio link needs no key


def test_audio_is_not_a_flat_line(client: FlaskClient) -> None:
    data = wav_bytes(32000, 32000)
    with wave.open(io.BytesIO(data), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    samples = memoryview(pcm).cast("h")
    assert max(samples) > 5000 and min(samples) < -5000


@pytest.mark.parametrize(
    ("lyrics", "seconds"),
    [
        (None, 10.0),
        ("", 10.0),
        ("one line", 5.0),
        ("\n".join(["la"] * 7), 17.5),
        ("x\n" * 40, 60.0),
    ],
)
def test_duration_follows_the_lyrics(lyrics: str | None, seconds: float) -> None:
    assert derive_duration(lyrics, None) == seconds
    assert derive_duration(lyrics, 3.0) == 3.0


def test_audio_sample_rate_key_and_default_rate(client: FlaskClient) -> None:
    a = created(client, "x [sim:latency=0]", audio_setting={"audio_sample_rate": 44100})
    b = created(client, "y [sim:latency=0]")
    c = created(
        client,
        "z [sim:latency=0]",
        audio_setting={"sample_rate": 24000, "audio_sample_rate": 24000, "bitrate": 256000},
    )
    for gen_id, rate in ((a, 44100), (b, 32000), (c, 24000)):
        resp = client.get(f"/_sim/audio/{quote(gen_id, safe='')}.wav")
        assert wav_info(resp.get_data())[2] == rate
        assert generation(client, gen_id)["sample_rate"] == rate


def test_audio_seconds_setting_and_config_override_the_lyrics() -> None:
    client = create_sim_app(make_settings(SIM_AUDIO_SECONDS="1.5")).test_client()
    gen_id = created(client, "x [sim:latency=0]", lyrics="a\nb\nc\nd\ne\nf")
    resp = client.get(f"/_sim/audio/{quote(gen_id, safe='')}.wav")
    _, _, rate, frames = wav_info(resp.get_data())
    assert frames / rate == pytest.approx(1.5)
    client.post("/_sim/config", json={"audio_seconds": 2.0})
    assert generation(client, created(client, "y"))["audio_seconds"] == 2.0
    client.post("/_sim/config", json={"audio_seconds": None})
    assert generation(client, created(client, "z"))["audio_seconds"] == 10.0


def test_audio_is_404_until_completed_and_for_errors(client: FlaskClient) -> None:
    pending = created(client, "x [sim:latency=5]")
    failed = created(client, "y [sim:latency=0] [sim:error]")
    for gen_id in (pending, failed, "unknown:model"):
        resp = client.get(f"/_sim/audio/{quote(gen_id, safe='')}.wav")
        assert_aimlapi_error(resp, 404)
    assert client.get("/_sim/audio/whatever.mp3").status_code == 404


# -- prompt markers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "name"), [("[sim:error]", "GenerationError"), ("[sim:moderated]", "ModerationError")]
)
def test_error_markers_end_in_status_error(
    tclient: FlaskClient, clock: FakeClock, marker: str, name: str
) -> None:
    gen_id = created(tclient, f"song {marker} [sim:latency=4]")
    assert poll(tclient, gen_id).get_json()["status"] == "queued"
    clock.advance(1)
    assert poll(tclient, gen_id).get_json()["status"] == "generating"
    clock.advance(3)
    body = poll(tclient, gen_id).get_json()
    assert body["status"] == "error"
    assert body["audio_file"] is None
    assert body["error"]["name"] == name
    assert body["error"]["message"]
    assert generation(tclient, gen_id)["outcome"] == "error"


def test_unknown_status_marker_then_completes(tclient: FlaskClient, clock: FakeClock) -> None:
    gen_id = created(tclient, "x [sim:unknown-status] [sim:latency=4]")
    assert poll(tclient, gen_id).get_json()["status"] == "mystery-state"
    clock.advance(2)
    assert poll(tclient, gen_id).get_json()["status"] == "mystery-state"
    clock.advance(2)
    assert poll(tclient, gen_id).get_json()["status"] == "completed"
    assert generation(tclient, gen_id)["outcome"] == "completed"


def test_garbage_marker_answers_non_json(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:garbage] [sim:latency=0]")
    for _ in range(2):
        resp = poll(client, gen_id)
        assert resp.status_code == 200
        assert resp.get_json(silent=True) is None
        assert resp.get_data(as_text=True) == "<html>oops</html>"
    row = generation(client, gen_id)
    assert row["poll_count"] == 2
    assert row["first_completed_seen_at"] is None  # the client never saw "completed"


def test_poll_5xx_marker(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:poll-5xx] [sim:latency=0]")
    for _ in range(2):
        assert_aimlapi_error(poll(client, gen_id), 502)


@pytest.mark.parametrize(
    ("marker", "status"),
    [("[sim:submit-5xx]", 503), ("[sim:submit-401]", 401), ("[sim:submit-429]", 429)],
)
def test_submit_markers_fail_and_create_nothing(
    client: FlaskClient, marker: str, status: int
) -> None:
    resp = submit(client, f"x {marker}")
    assert_aimlapi_error(resp, status)
    if status == 429:
        assert resp.headers["Retry-After"] == "2"
    assert record(client, summary=1)["generations"] == []
    last = record(client)["requests"][-1]
    assert last["status_code"] == status
    assert last["prompt"] == f"x {marker}"  # failed submits stay visible in the record


def test_submit_hang_creates_before_answering(client: FlaskClient) -> None:
    resp, elapsed, rows = answered_late(
        client,
        lambda c: submit(c, "x [sim:submit-hang=0.4]"),
        lambda: record(client, summary=1)["generations"],
    )
    # The POST had not answered yet, but the upstream already had the job.
    assert len(rows) == 1
    assert resp.status_code == 201
    assert resp.get_json()["id"] == rows[0]["id"]
    assert elapsed >= 0.4


def test_poll_hang_marker_delays_every_get(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:poll-hang=0.2] [sim:latency=0]")
    t0 = time.monotonic()
    assert poll(client, gen_id).get_json()["status"] == "completed"
    assert time.monotonic() - t0 >= 0.2


def test_never_marker_stays_generating(tclient: FlaskClient, clock: FakeClock) -> None:
    gen_id = created(tclient, "x [sim:never] [sim:latency=5]")
    assert poll(tclient, gen_id).get_json()["status"] == "queued"
    clock.advance(10_000)
    assert poll(tclient, gen_id).get_json()["status"] == "generating"
    row = generation(tclient, gen_id)
    assert row["ready_at"] is None
    assert row["outcome"] == "never"
    assert record(tclient, summary=1)["counts"]["in_flight"] == 1


# -- one-shot faults ---------------------------------------------------------------------------


def test_submit_faults_fire_once_in_order(client: FlaskClient) -> None:
    faults = {
        "submit": [
            {"status": 500},
            {"status": 503, "body": '{"custom": 1}', "headers": {"X-Sim": "yes"}},
            {"garbage": True},
        ]
    }
    assert client.post("/_sim/faults", json=faults).status_code == 200
    assert_aimlapi_error(submit(client), 500)
    second = submit(client)
    assert second.status_code == 503
    assert second.get_json() == {"custom": 1}
    assert second.headers["X-Sim"] == "yes"
    third = submit(client)
    assert third.status_code == 200 and third.get_json(silent=True) is None
    assert record(client, summary=1)["generations"] == []  # faults create nothing
    assert submit(client).status_code == 201  # consumed: back to normal
    assert client.get("/_sim/faults").get_json() == {"submit": [], "poll": []}


def test_poll_faults_fire_once_in_order(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:latency=0]")
    client.post(
        "/_sim/faults",
        json={
            "poll": [
                {"status_word": "weird"},
                {"garbage": True},
                {"status": 502, "headers": {"Retry-After": "1"}},
                {"hang": 0.2},
            ]
        },
    )
    weird = poll(client, gen_id).get_json()
    assert weird == {"id": gen_id, "status": "weird", "audio_file": None, "error": None}
    # The client was told "weird", so it has not seen the completion yet.
    assert generation(client, gen_id)["first_completed_seen_at"] is None
    assert poll(client, gen_id).get_json(silent=True) is None
    resp = poll(client, gen_id)
    assert_aimlapi_error(resp, 502)
    assert resp.headers["Retry-After"] == "1"
    t0 = time.monotonic()
    assert poll(client, gen_id).get_json()["status"] == "completed"  # hang, then normal
    assert time.monotonic() - t0 >= 0.2
    assert poll(client, gen_id).get_json()["status"] == "completed"
    assert generation(client, gen_id)["poll_count"] == 5


def test_faults_can_be_cleared_and_are_validated(client: FlaskClient) -> None:
    client.post("/_sim/faults", json={"submit": [{"status": 500}], "poll": [{"hang": 1}]})
    assert client.get("/_sim/faults").get_json() == {
        "submit": [{"status": 500}],
        "poll": [{"hang": 1.0}],
    }
    assert client.delete("/_sim/faults").status_code == 200
    assert submit(client).status_code == 201
    bad_lists: list[dict[str, Any]] = [
        {"submit": [{"status_word": "x"}]},
        {"poll": [{"status": "500"}]},
        {"poll": [{"hang": -1}]},
        {"poll": [{"nope": 1}]},
        {"poll": [{}]},
        {"other": []},
        {"poll": [{"status": 500}, {"bogus": True}]},
    ]
    for bad in bad_lists:
        assert_aimlapi_error(client.post("/_sim/faults", json=bad), 400)
    # A rejected list queues nothing, not even its valid first half.
    assert client.get("/_sim/faults").get_json() == {"submit": [], "poll": []}


# -- config, reset, record ---------------------------------------------------------------------


def test_config_get_and_partial_update(client: FlaskClient) -> None:
    assert client.get("/_sim/config").get_json() == {
        "latency": 0.2,
        "jitter": 0.0,
        "audio_seconds": None,
    }
    resp = client.post("/_sim/config", json={"latency": 1.5})
    assert resp.get_json() == {"latency": 1.5, "jitter": 0.0, "audio_seconds": None}
    assert_aimlapi_error(client.post("/_sim/config", json={"latency": -1}), 400)
    assert_aimlapi_error(client.post("/_sim/config", json={"speed": 1}), 400)
    assert client.get("/_sim/config").get_json()["latency"] == 1.5


def test_reset_forgets_everything_and_restores_settings(client: FlaskClient) -> None:
    client.post("/_sim/config", json={"latency": 9, "jitter": 1, "audio_seconds": 3})
    client.post("/_sim/faults", json={"submit": [{"status": 500}]})
    assert_aimlapi_error(submit(client), 500)
    created(client)
    assert client.post("/_sim/reset").status_code == 200
    assert client.get("/_sim/config").get_json() == {
        "latency": 0.2,
        "jitter": 0.0,
        "audio_seconds": None,
    }
    assert client.get("/_sim/faults").get_json() == {"submit": [], "poll": []}
    rec = record(client)
    assert rec["requests"] == [] and rec["generations"] == []
    assert rec["counts"]["requests"] == 0


def test_record_entries_since_and_summary(client: FlaskClient) -> None:
    gen_id = created(client, "x [sim:latency=0]")
    poll(client, gen_id)
    client.get(f"/_sim/audio/{quote(gen_id, safe='')}.wav")
    full = record(client)
    rows = full["requests"]
    assert [r["kind"] for r in rows] == ["submit", "poll", "audio"]
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert [r["method"] for r in rows] == ["POST", "GET", "GET"]
    assert rows[0]["path"] == API and rows[0]["status_code"] == 201
    assert rows[2]["path"] == f"/_sim/audio/{gen_id}.wav"
    assert all(r["generation_id"] == gen_id for r in rows)
    assert [r["prompt"] for r in rows] == ["x [sim:latency=0]", None, None]
    assert rows[0]["at"] <= rows[1]["at"] <= rows[2]["at"] <= time.time()
    assert [r["seq"] for r in record(client, since=1)["requests"]] == [2, 3]
    assert record(client, since=3)["requests"] == []
    assert_aimlapi_error(client.get("/_sim/record?since=abc"), 400)

    summary = record(client, summary=1)
    assert "requests" not in summary
    counts = summary["counts"]
    assert counts["requests"] == 3
    assert counts["by_kind"] == {"submit": 1, "poll": 1, "audio": 1}
    assert counts["by_status_code"] == {"200": 2, "201": 1}
    assert counts["generations"] == 1 and counts["in_flight"] == 0
    (row,) = summary["generations"]
    expected_keys = {
        "id", "model", "prompt", "created_at", "ready_at", "latency", "submit_count",
        "poll_count", "first_completed_seen_at", "audio_seconds", "sample_rate", "outcome",
    }  # fmt: skip
    assert expected_keys <= set(row)
    assert row["model"] == "minimax/music-2.6"
    assert row["prompt"] == "x [sim:latency=0]"


def test_submit_count_exposes_duplicate_submissions(client: FlaskClient) -> None:
    a1 = created(client, "same song")
    a2 = created(client, "same song")
    b = created(client, "another song")
    assert generation(client, a1)["submit_count"] == 2
    assert generation(client, a2)["submit_count"] == 2
    assert generation(client, b)["submit_count"] == 1


def test_request_record_is_capped_but_counts_stay_exact() -> None:
    state = SimState(SimConfig(0.0, 0.0, None), max_requests=100)
    client = create_sim_app(make_settings(), state=state).test_client()
    assert sim_state(client.application) is state
    for _ in range(150):
        client.get(API, headers=AUTH)  # 400: no generation_id
    rec = record(client)
    assert len(rec["requests"]) <= 100
    assert rec["requests"][-1]["seq"] == 150
    assert rec["counts"]["requests"] == 150
    assert [r["seq"] for r in record(client, since=148)["requests"]] == [149, 150]


def test_concurrent_clients_keep_the_store_consistent(app: Flask) -> None:
    errors: list[str] = []

    def worker(n: int) -> None:
        c = app.test_client()
        for i in range(20):
            resp = submit(c, f"job {n}-{i} [sim:latency=0]")
            if resp.status_code != 201 or poll(c, resp.get_json()["id"]).status_code != 200:
                errors.append(f"{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rec = record(app.test_client())
    assert len(rec["generations"]) == 160
    assert [r["seq"] for r in rec["requests"]] == list(range(1, 321))
    assert all(g["poll_count"] == 1 for g in rec["generations"])


# -- real servers ------------------------------------------------------------------------------


def test_real_socket_round_trip(live: str) -> None:
    with requests.Session() as http:
        http.headers.update(AUTH)
        resp = http.post(
            f"{live}{API}",
            json={"model": "minimax/music-2.6", "prompt": "p", "lyrics": "a\nb"},
            timeout=5,
        )
        assert resp.status_code == 201
        gen_id = resp.json()["id"]
        deadline = time.monotonic() + 5
        while (
            body := http.get(f"{live}{API}", params={"generation_id": gen_id}, timeout=5).json()
        )["status"] != "completed":
            assert body["status"] in {"queued", "generating"}
            assert time.monotonic() < deadline
            time.sleep(0.02)
        url = body["audio_file"]["url"]
        assert url.startswith(f"{live}/_sim/audio/")  # absolute, on this very server
        audio = requests.get(url, timeout=5)
        assert audio.status_code == 200
        assert audio.headers["Content-Type"] == "audio/wav"
        assert int(audio.headers["Content-Length"]) == len(audio.content)
        _, _, rate, frames = wav_info(audio.content)
        assert (rate, frames / rate) == (32000, 5.0)  # two lyric lines: clamped to 5 s
        rec = requests.get(f"{live}/_sim/record", timeout=5).json()
        assert rec["requests"][0]["auth"] == KEY


def test_real_socket_submit_hang_provokes_a_read_timeout(live: str) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            f"{live}{API}",
            json={"model": "m", "prompt": "x [sim:submit-hang=1]"},
            headers=AUTH,
            timeout=(2, 0.2),
        )
    rec = requests.get(f"{live}/_sim/record?summary=1", timeout=5).json()
    assert len(rec["generations"]) == 1  # the upstream made the job all the same


def test_gunicorn_options_are_one_gthread_process() -> None:
    settings = make_settings(SIM_HOST="0.0.0.0", SIM_PORT="8123", SIM_THREADS="7")  # noqa: S104
    opts = gunicorn_options(settings)
    assert opts["workers"] == 1
    assert opts["worker_class"] == "gthread"
    assert opts["threads"] == 7
    assert opts["bind"] == "0.0.0.0:8123"
    assert opts["accesslog"] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_runs_under_gunicorn() -> None:
    port = _free_port()
    env = {
        **os.environ,
        "SIM_PORT": str(port),
        "SIM_LATENCY": "0",
        "SIM_JITTER": "0",
        "LOG_LEVEL": "WARNING",
    }
    code = "from app.sim.server import serve; from config.settings import load_settings; serve(load_settings())"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{base}/_sim/health", headers={"Connection": "close"}, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.05)
        # Connection: close, or gunicorn lingers 2 s over a kept-alive connection when stopping.
        headers = {**AUTH, "Connection": "close"}
        resp = requests.post(
            f"{base}{API}", json={"model": "m", "prompt": "p"}, headers=headers, timeout=5
        )
        assert resp.status_code == 201
        body = requests.get(
            f"{base}{API}", params={"generation_id": resp.json()["id"]}, headers=headers, timeout=5
        ).json()
        assert body["status"] == "completed"
        # The other two protocols are served by the same process.
        mm = requests.post(
            f"{base}/v1/music_generation",
            json={"model": "music-2.6", "prompt": "p [sim:latency=0.2]", "output_format": "url"},
            headers=headers,
            timeout=5,
        ).json()
        assert mm["base_resp"]["status_code"] == 0
        assert requests.get(mm["data"]["audio"], headers=headers, timeout=5).status_code == 200
        ua = requests.post(
            f"{base}/v1/minimax/music/create", json={"prompt": "p"}, headers=headers, timeout=5
        )
        assert ua.status_code == 200
        rec = requests.get(f"{base}/_sim/record?summary=1", headers=headers, timeout=5).json()
        assert sorted(g["protocol"] for g in rec["generations"]) == ["aimlapi", "minimax", "useapi"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""The simulator's MiniMax protocol: a synchronous ``POST /v1/music_generation`` held open."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from app.sim import create_sim_app
from tests.unit.sim.support import (
    FakeClock,
    account_row,
    answered_late,
    clocked_client,
    generation,
    make_settings,
    record,
    serving,
    wav_info,
)

PATH = "/v1/music_generation"
KEY = "mm-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUTH_MISSING = (
    "login fail: Please carry the API secret key in the 'Authorization' field of the request header"
)
SUCCESS_KEYS = {"data", "trace_id", "extra_info", "analysis_info", "base_resp"}


@pytest.fixture
def client() -> FlaskClient:
    # Short songs keep the hex answers small; the latency is 0.2 s unless a marker says otherwise.
    return create_sim_app(make_settings(SIM_AUDIO_SECONDS="1")).test_client()


def music(
    client: FlaskClient,
    prompt: str = "calm piano",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    body = {"model": "music-2.6", "prompt": prompt, **extra}
    return client.post(PATH, json=body, headers=AUTH if headers is None else headers)


def base_resp(resp: Any) -> tuple[int, str]:
    assert resp.status_code == 200  # MiniMax reports these failures with HTTP 200
    body = resp.get_json()
    assert "data" not in body
    assert re.fullmatch(r"[0-9a-f]{32}", body["trace_id"])
    return body["base_resp"]["status_code"], body["base_resp"]["status_msg"]


def assert_gateway_error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status
    body: dict[str, Any] = resp.get_json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message", "http_code"}
    assert body["error"]["http_code"] == status
    assert body["error"]["type"] and body["error"]["message"]
    return body


def generations(client: FlaskClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = record(client, summary=1)["generations"]
    return rows


# -- success -----------------------------------------------------------------------------------


def test_hex_answer_is_a_valid_wav_after_the_latency(client: FlaskClient) -> None:
    lyrics = "[Verse]\nline one\nline two"
    t0 = time.monotonic()
    resp = music(
        client,
        "lofi [sim:latency=0.3]",
        lyrics=lyrics,
        audio_setting={"sample_rate": 16000, "bitrate": 128000, "format": "wav"},
    )
    assert time.monotonic() - t0 >= 0.3  # held open for the generation's latency
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == SUCCESS_KEYS
    assert body["base_resp"] == {"status_code": 0, "status_msg": "success"}
    assert body["analysis_info"] is None
    assert set(body["data"]) == {"audio", "status"}
    assert body["data"]["status"] == 2
    wav = bytes.fromhex(body["data"]["audio"])
    channels, width, rate, frames = wav_info(wav)
    assert (channels, width, rate) == (1, 2, 16000)
    assert frames / rate == pytest.approx(1.0)  # SIM_AUDIO_SECONDS
    assert body["extra_info"] == {
        "music_duration": 1000,
        "music_sample_rate": 16000,
        "music_channel": 1,
        "bitrate": 128000,
        "music_size": len(wav),
    }
    row = generation(client, body["trace_id"])  # the trace id names the generation
    assert row["protocol"] == "minimax"
    assert row["account"] == KEY and row["auth"] == KEY
    assert row["outcome"] == "completed"
    assert row["latency"] == 0.3
    assert row["poll_count"] == 0
    assert row["first_completed_seen_at"] >= row["ready_at"] == row["created_at"] + 0.3
    (req,) = record(client)["requests"]
    assert (req["method"], req["path"], req["kind"]) == ("POST", PATH, "submit")
    assert (req["status_code"], req["generation_id"]) == (200, body["trace_id"])
    assert req["prompt"] == "lofi [sim:latency=0.3]"


def test_defaults_are_hex_at_32_khz_and_256_kbps(client: FlaskClient) -> None:
    body = music(client, "x [sim:latency=0]").get_json()
    assert wav_info(bytes.fromhex(body["data"]["audio"]))[2] == 32000
    assert body["extra_info"]["music_sample_rate"] == 32000
    assert body["extra_info"]["bitrate"] == 256000


def test_url_mode_links_to_the_wav_on_this_server(client: FlaskClient) -> None:
    body = music(client, "x [sim:latency=0]", output_format="url").get_json()
    assert set(body["data"]) == {"audio", "status"}
    url = body["data"]["audio"]
    assert url == f"http://localhost/_sim/audio/{quote(body['trace_id'], safe='')}.wav"
    audio = client.get(urlsplit(url).path)
    assert audio.status_code == 200
    assert audio.headers["Content-Type"] == "audio/wav"
    assert len(audio.get_data()) == body["extra_info"]["music_size"]
    assert wav_info(audio.get_data())[2] == body["extra_info"]["music_sample_rate"]


def test_audio_url_field_marker_moves_the_link(client: FlaskClient) -> None:
    body = music(client, "x [sim:latency=0] [sim:audio-url-field]", output_format="url").get_json()
    assert set(body["data"]) == {"audio_url", "status"}
    assert client.get(urlsplit(body["data"]["audio_url"]).path).status_code == 200
    # In hex mode there is no link to move: the marker changes nothing.
    hexed = music(client, "y [sim:latency=0] [sim:audio-url-field]", output_format="hex")
    assert set(hexed.get_json()["data"]) == {"audio", "status"}


def test_first_completed_seen_at_is_when_the_answer_left() -> None:
    clock = FakeClock()
    client = clocked_client(clock, SIM_AUDIO_SECONDS="1")
    body = music(client, "x [sim:latency=0]").get_json()
    row = generation(client, body["trace_id"])
    assert row["created_at"] == row["ready_at"] == row["first_completed_seen_at"] == clock.now


# -- failures ----------------------------------------------------------------------------------


def test_missing_key_is_base_resp_1004_with_http_200(client: FlaskClient) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic x"}):
        assert base_resp(music(client, headers=headers)) == (1004, AUTH_MISSING)
    assert generations(client) == []
    assert [r["auth"] for r in record(client)["requests"]] == [None, None, None]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "no model"},
        {"model": "music-2.6"},
        {"model": "music-2.6", "prompt": ""},
        {"model": "music-2.6", "prompt": "p", "lyrics": 5},
        {"model": "music-2.6", "prompt": "p", "output_format": "mp3"},
        {"model": "music-2.6", "prompt": "p", "stream": True, "output_format": "url"},
        {"model": "music-2.6", "prompt": "p", "stream": "no"},
        {"model": "music-2.6", "prompt": "p", "audio_setting": {"sample_rate": 22050}},
        {"model": "music-2.6", "prompt": "p", "audio_setting": {"bitrate": 1}},
        {"model": "music-2.6", "prompt": "p", "audio_setting": {"format": "ogg"}},
        {"model": "music-2.6", "prompt": "p", "audio_setting": "loud"},
        {"model": "music-2.6", "prompt": "p [sim:nope]"},
        {"model": "music-2.6", "prompt": "p [sim:moderated-prompt]"},  # a useapi marker
        {"model": "music-2.6", "prompt": "p [sim:never]"},
        {"model": "music-2.6", "prompt": "p [sim:base-resp=0]"},
        {"model": "music-2.6", "prompt": "p [sim:base-resp=abc]"},
        {"model": "music-2.6", "prompt": "p [sim:http=200]"},
        ["not", "an", "object"],
    ],
)
def test_invalid_params_are_base_resp_2013_at_once(client: FlaskClient, body: Any) -> None:
    code, msg = base_resp(client.post(PATH, json=body, headers=AUTH))
    assert code == 2013
    assert msg.startswith("invalid params, ")
    assert generations(client) == []


@pytest.mark.parametrize(
    ("marker", "code"),
    [("[sim:base-resp=1002]", 1002), ("[sim:error]", 1000), ("[sim:moderated]", 1026)],
)
def test_base_resp_markers_answer_after_the_latency(
    client: FlaskClient, marker: str, code: int
) -> None:
    t0 = time.monotonic()
    resp = music(client, f"x {marker} [sim:latency=0.2]")
    assert time.monotonic() - t0 >= 0.2
    got, msg = base_resp(resp)
    assert got == code and msg
    (row,) = generations(client)
    assert row["outcome"] == "error"
    assert row["first_completed_seen_at"] is None


def test_any_base_resp_code_can_be_asked_for(client: FlaskClient) -> None:
    assert base_resp(music(client, "x [sim:base-resp=7777] [sim:latency=0]"))[0] == 7777


@pytest.mark.parametrize(
    ("marker", "status", "kind"),
    [
        ("[sim:http=402]", 402, "insufficient_balance_error"),
        ("[sim:http=422]", 422, "unprocessable_entity_error"),
        ("[sim:http=429]", 429, "rate_limit_error"),
        ("[sim:http=500]", 500, "api_error"),
        ("[sim:submit-5xx]", 503, "api_error"),
        ("[sim:submit-401]", 401, "authentication_error"),
        ("[sim:submit-429]", 429, "rate_limit_error"),
    ],
)
def test_gateway_errors_answer_at_once_and_create_nothing(
    client: FlaskClient, marker: str, status: int, kind: str
) -> None:
    t0 = time.monotonic()
    resp = music(client, f"x {marker} [sim:latency=5]")
    assert time.monotonic() - t0 < 1
    assert assert_gateway_error(resp, status)["error"]["type"] == kind
    assert generations(client) == []
    assert record(client)["requests"][-1]["prompt"] == f"x {marker} [sim:latency=5]"


def test_gateway_422_message_mentions_sensitive_content(client: FlaskClient) -> None:
    body = assert_gateway_error(music(client, "x [sim:http=422]"), 422)
    assert "sensitive content" in body["error"]["message"]


def test_garbage_marker_answers_non_json_after_the_latency(client: FlaskClient) -> None:
    t0 = time.monotonic()
    resp = music(client, "x [sim:garbage] [sim:latency=0.2]")
    assert time.monotonic() - t0 >= 0.2
    assert resp.status_code == 200
    assert resp.get_json(silent=True) is None
    assert resp.get_data(as_text=True) == "<html>oops</html>"
    (row,) = generations(client)
    assert row["outcome"] == "completed"  # the song was made (and billed) all the same
    assert row["first_completed_seen_at"] is None


def test_submit_hang_creates_the_song_then_answers_late(client: FlaskClient) -> None:
    resp, elapsed, (row,) = answered_late(
        client,
        lambda c: music(c, "x [sim:latency=0] [sim:submit-hang=0.4]"),
        lambda: generations(client),  # the upstream already has the song
    )
    assert row["first_completed_seen_at"] is None
    assert elapsed >= 0.4
    assert resp.get_json()["trace_id"] == row["id"]
    assert generation(client, row["id"])["first_completed_seen_at"] is not None


def test_one_shot_faults_apply_in_the_gateway_shape(client: FlaskClient) -> None:
    client.post("/_sim/faults", json={"submit": [{"status": 502}, {"hang": 0.2}]})
    assert_gateway_error(music(client, "x [sim:latency=0]"), 502)
    assert generations(client) == []
    t0 = time.monotonic()
    assert music(client, "x [sim:latency=0]").get_json()["base_resp"]["status_code"] == 0
    assert time.monotonic() - t0 >= 0.2


def test_other_methods_answer_in_the_gateway_shape(client: FlaskClient) -> None:
    assert_gateway_error(client.get(PATH, headers=AUTH), 405)


# -- calls held open at once ---------------------------------------------------------------------


@pytest.fixture
def live() -> Iterator[str]:
    # Not the shared one: short songs keep the hex answers small, at the default latency.
    with serving(SIM_AUDIO_SECONDS="0.5") as base_url:
        yield base_url


def test_concurrent_open_calls_are_measured_per_key(live: str) -> None:
    answers: list[int] = []
    lock = threading.Lock()

    def call(key: str) -> None:
        resp = requests.post(
            f"{live}{PATH}",
            json={"model": "music-2.6", "prompt": "x [sim:latency=1]", "output_format": "url"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        with lock:
            answers.append(resp.json()["base_resp"]["status_code"])

    threads = [threading.Thread(target=call, args=("key-a",)) for _ in range(6)]
    threads += [threading.Thread(target=call, args=("key-b",)) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # While the calls are held open, the record shows them all in flight at once.
    deadline = time.monotonic() + 0.8
    while True:
        during = requests.get(f"{live}/_sim/record?summary=1", timeout=5).json()
        in_flight = {a["account"]: a["in_flight"] for a in during["accounts"]}
        if in_flight == {"key-a": 6, "key-b": 2} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert in_flight == {"key-a": 6, "key-b": 2}
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 3  # together, not one by one (that would take 8 s)
    assert answers == [0] * 8

    # Calls made one after another do not raise the peak.
    for _ in range(2):
        requests.post(
            f"{live}{PATH}",
            json={"model": "music-2.6", "prompt": "y [sim:latency=0]"},
            headers={"Authorization": "Bearer key-b"},
            timeout=10,
        )
    after = requests.get(f"{live}/_sim/record", timeout=5).json()
    a = account_row(after, "minimax", "key-a")
    b = account_row(after, "minimax", "key-b")
    assert (a["max_concurrent"], a["in_flight"], a["rejected_busy"]) == (6, 0, 0)
    assert (b["max_concurrent"], b["in_flight"]) == (2, 0)
    assert len(after["generations"]) == 10
    assert {g["account"] for g in after["generations"]} == {"key-a", "key-b"}


def test_real_socket_hex_and_url_answers(live: str) -> None:
    resp = requests.post(
        f"{live}{PATH}",
        json={"model": "music-2.6", "prompt": "x [sim:latency=0]", "output_format": "url"},
        headers=AUTH,
        timeout=5,
    )
    url = resp.json()["data"]["audio"]
    assert url.startswith(f"{live}/_sim/audio/")
    audio = requests.get(url, timeout=5)
    assert audio.status_code == 200
    hexed = requests.post(
        f"{live}{PATH}",
        json={"model": "music-2.6", "prompt": "y [sim:latency=0]"},
        headers=AUTH,
        timeout=5,
    ).json()
    assert bytes.fromhex(hexed["data"]["audio"]) == audio.content  # same length, same tone


def test_real_socket_submit_hang_provokes_a_read_timeout(live: str) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            f"{live}{PATH}",
            json={"model": "music-2.6", "prompt": "x [sim:latency=0] [sim:submit-hang=1]"},
            headers=AUTH,
            timeout=(2, 0.3),
        )
    rec = requests.get(f"{live}/_sim/record?summary=1", timeout=5).json()
    assert len(rec["generations"]) == 1  # MiniMax made (and billed) the song all the same

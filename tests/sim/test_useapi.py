"""The simulator's useapi.net MiniMax music protocol: create, poll, one song per account."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from app.sim import create_sim_app
from app.sim.useapi import account_key
from tests.sim.support import (
    FakeClock,
    account_row,
    answered_late,
    generation,
    make_settings,
    record,
    serving,
    wav_info,
)

CREATE = "/v1/minimax/music/create"
TOKEN = "user:1-abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUSY = {
    "error": "The previous request has not been completed yet. Please try again later.",
    "code": 429,
}
STATUS_KEYS = {
    "musicId", "title", "lyrics", "status", "statusLabel", "statusFinal", "audioURL",
    "duration", "createTime",
}  # fmt: skip


@pytest.fixture
def client() -> FlaskClient:
    return create_sim_app(make_settings()).test_client()


def create(
    client: FlaskClient,
    prompt: str = "dreamy synthpop",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    body = {"model": "music-3.0", "prompt": prompt, **extra}
    return client.post(CREATE, json=body, headers=AUTH if headers is None else headers)


def created(client: FlaskClient, prompt: str = "dreamy synthpop", **extra: Any) -> str:
    resp = create(client, prompt, **extra)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    music_id: str = resp.get_json()["musicId"]
    return music_id


def status(client: FlaskClient, music_id: str, headers: dict[str, str] | None = None) -> Any:
    return client.get(
        f"/v1/minimax/music/{quote(music_id, safe='')}",
        headers=AUTH if headers is None else headers,
    )


def status_body(client: FlaskClient, music_id: str) -> dict[str, Any]:
    resp = status(client, music_id)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.get_json()
    assert set(body) == STATUS_KEYS
    return body


def assert_useapi_error(resp: Any, code: int, message: str | None = None) -> None:
    assert resp.status_code == code
    body = resp.get_json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    if message is not None:
        assert body["error"] == message


def audio_path(music_id: str) -> str:
    return f"/_sim/audio/{quote(music_id, safe='')}.wav"


def accounts(client: FlaskClient) -> dict[str, Any]:
    return record(client, summary=1)


# -- shapes ------------------------------------------------------------------------------------


def test_create_answers_a_pending_music_id(client: FlaskClient) -> None:
    resp = create(client)
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"musicId", "status", "statusLabel"}
    assert (body["status"], body["statusLabel"]) == (0, "pending")
    assert re.fullmatch(r"user:1-minimax:default-music:\d+", body["musicId"])
    named = create(client, "other", account="acct-7").get_json()["musicId"]
    assert re.fullmatch(r"user:1-minimax:acct-7-music:\d+", named)
    row = generation(client, named)
    assert row["protocol"] == "useapi"
    assert row["account"] == account_key(TOKEN, "acct-7") == f"{TOKEN}|acct-7"
    assert row["auth"] == TOKEN
    assert generation(client, body["musicId"])["account"] == f"{TOKEN}|"


def test_auth_is_required_on_create_and_status(client: FlaskClient) -> None:
    unauthorized = {"error": "Unauthorized", "code": 401}
    for headers in ({}, {"Authorization": "Bearer "}):
        resp = create(client, headers=headers)
        assert (resp.status_code, resp.get_json()) == (401, unauthorized)
    music_id = created(client)
    resp = status(client, music_id, headers={})
    assert (resp.status_code, resp.get_json()) == (401, unauthorized)
    assert len(record(client, summary=1)["generations"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"model": "music-3.0"},
        {"prompt": ""},
        {"prompt": 5},
        {"prompt": "p", "instrumental": "yes"},
        {"prompt": "p", "lyrics": ["a"]},
        {"prompt": "p", "account": 3},
        {"prompt": "p [sim:nope]"},
        {"prompt": "p [sim:base-resp=1026]"},  # a MiniMax marker
        {"prompt": "p [sim:post-moderated=soon]"},
        ["not", "an", "object"],
    ],
)
def test_invalid_create_is_400_and_creates_nothing(client: FlaskClient, body: Any) -> None:
    assert_useapi_error(client.post(CREATE, json=body, headers=AUTH), 400)
    assert record(client, summary=1)["generations"] == []


def test_unknown_music_id_is_404(client: FlaskClient) -> None:
    resp = status(client, "user:1-minimax:default-music:999999")
    assert (resp.status_code, resp.get_json()) == (404, {"error": "Not found.", "code": 404})
    # An AIMLAPI generation is not a useapi song.
    aiml = client.post(
        "/v2/generate/audio", json={"model": "m", "prompt": "p"}, headers=AUTH
    ).get_json()["id"]
    assert_useapi_error(status(client, aiml), 404, "Not found.")
    assert_useapi_error(client.delete(f"/v1/minimax/music/{quote(aiml, safe='')}"), 405)


# -- status over time --------------------------------------------------------------------------


def test_status_progresses_pending_processing_completed(
    tclient: FlaskClient, clock: FakeClock
) -> None:
    lyrics = "[Verse]\none\ntwo\nthree\nfour"
    music_id = created(tclient, "lofi [sim:latency=10]", title="Rain", lyrics=lyrics)
    first = status_body(tclient, music_id)
    assert first["musicId"] == music_id
    assert (first["title"], first["lyrics"]) == ("Rain", lyrics)
    assert (first["status"], first["statusLabel"], first["statusFinal"]) == (0, "pending", False)
    assert first["audioURL"] is None
    created_at = generation(tclient, music_id)["created_at"]
    assert first["createTime"] == datetime.fromtimestamp(created_at, UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    clock.advance(0.99)
    assert status_body(tclient, music_id)["status"] == 0  # first 10 % of the latency
    clock.advance(0.02)
    body = status_body(tclient, music_id)
    assert (body["status"], body["statusLabel"], body["statusFinal"]) == (1, "processing", False)
    clock.advance(8.98)
    assert status_body(tclient, music_id)["status"] == 1
    assert generation(tclient, music_id)["first_completed_seen_at"] is None
    clock.advance(0.02)
    done = status_body(tclient, music_id)
    assert (done["status"], done["statusLabel"], done["statusFinal"]) == (2, "completed", True)
    assert done["audioURL"] == f"http://localhost{audio_path(music_id)}"
    assert done["duration"] == 12.5  # five lyric lines
    audio = tclient.get(urlsplit(done["audioURL"]).path)
    assert audio.status_code == 200
    _, _, rate, frames = wav_info(audio.get_data())
    assert frames / rate == pytest.approx(12.5)
    row = generation(tclient, music_id)
    assert row["poll_count"] == 5
    assert row["first_completed_seen_at"] == clock.now
    assert row["ready_at"] == row["created_at"] + 10
    clock.advance(1)
    status_body(tclient, music_id)
    assert generation(tclient, music_id)["first_completed_seen_at"] == clock.now - 1


def test_status_progresses_in_real_time(client: FlaskClient) -> None:
    music_id = created(client, "x [sim:latency=0.3]")
    assert status_body(client, music_id)["status"] in {0, 1}
    time.sleep(0.35)
    assert status_body(client, music_id)["status"] == 2


def test_instrumental_songs_have_no_lyrics(client: FlaskClient) -> None:
    music_id = created(client, "x [sim:latency=0]", lyrics="a\nb\nc", instrumental=True)
    body = status_body(client, music_id)
    assert body["lyrics"] == ""
    assert body["duration"] == 10.0  # a prompt-only song


# -- one generation at a time per account --------------------------------------------------------


def test_second_create_on_a_busy_account_is_429(tclient: FlaskClient, clock: FakeClock) -> None:
    first = created(tclient, "one [sim:latency=10]")
    busy = create(tclient, "two")
    assert (busy.status_code, busy.get_json()) == (429, BUSY)
    assert len(record(tclient, summary=1)["generations"]) == 1  # nothing was made
    # Another account field, or another token, is another upstream account.
    created(tclient, "three [sim:latency=10]", account="second")
    created(tclient, "four [sim:latency=10]", headers={"Authorization": "Bearer user:2-zzz"})
    clock.advance(5)
    assert create(tclient, "five").status_code == 429
    rec = accounts(tclient)
    default = account_row(rec, "useapi", f"{TOKEN}|")
    assert default == {
        "protocol": "useapi",
        "account": f"{TOKEN}|",
        "max_concurrent": 1,
        "in_flight": 1,
        "rejected_busy": 2,
    }
    assert account_row(rec, "useapi", f"{TOKEN}|second")["rejected_busy"] == 0
    assert account_row(rec, "useapi", "user:2-zzz|")["max_concurrent"] == 1
    clock.advance(5)  # the first song is done: the account is free again
    assert status_body(tclient, first)["status"] == 2
    second = created(tclient, "six [sim:latency=10]")
    assert second != first
    rec = accounts(tclient)
    assert account_row(rec, "useapi", f"{TOKEN}|")["max_concurrent"] == 1
    assert account_row(rec, "useapi", f"{TOKEN}|")["in_flight"] == 1
    statuses = [r["status_code"] for r in record(tclient)["requests"] if r["kind"] == "submit"]
    assert statuses == [200, 429, 200, 200, 429, 200]


def test_racing_creates_on_one_account_let_exactly_one_through() -> None:
    with serving() as base_url:
        codes: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(12)

        def go(account: str) -> None:
            barrier.wait()
            resp = requests.post(
                f"{base_url}{CREATE}",
                json={"prompt": "race [sim:latency=5]", "account": account},
                headers=AUTH,
                timeout=10,
            )
            with lock:
                codes.append(resp.status_code)

        threads = [threading.Thread(target=go, args=("a",)) for _ in range(8)]
        threads += [threading.Thread(target=go, args=("b",)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 200] + [429] * 10
        rec = requests.get(f"{base_url}/_sim/record?summary=1", timeout=5).json()
        a = account_row(rec, "useapi", f"{TOKEN}|a")
        b = account_row(rec, "useapi", f"{TOKEN}|b")
        assert (a["max_concurrent"], a["in_flight"], a["rejected_busy"]) == (1, 1, 7)
        assert (b["max_concurrent"], b["in_flight"], b["rejected_busy"]) == (1, 1, 3)


# -- markers -----------------------------------------------------------------------------------


def test_moderated_prompt_is_422_and_creates_nothing(
    tclient: FlaskClient, clock: FakeClock
) -> None:
    resp = create(tclient, "x [sim:moderated-prompt]")
    assert (resp.status_code, resp.get_json()) == (422, {"error": "Moderated prompt"})
    assert record(tclient, summary=1)["generations"] == []
    assert created(tclient, "y [sim:latency=10]")  # the account was never busy
    # useapi checks its own slot first: a busy account answers 429 whatever the prompt.
    assert create(tclient, "z [sim:moderated-prompt]").status_code == 429
    assert account_row(accounts(tclient), "useapi", f"{TOKEN}|")["rejected_busy"] == 1


def test_moderated_marker_ends_in_status_4(tclient: FlaskClient, clock: FakeClock) -> None:
    music_id = created(tclient, "x [sim:moderated] [sim:latency=4]")
    assert status_body(tclient, music_id)["status"] == 0
    clock.advance(1)
    assert status_body(tclient, music_id)["status"] == 1
    assert create(tclient, "busy").status_code == 429
    clock.advance(3)
    body = status_body(tclient, music_id)
    assert (body["status"], body["statusLabel"], body["statusFinal"]) == (4, "moderated", True)
    assert body["audioURL"] is None
    assert tclient.get(audio_path(music_id)).status_code == 404
    row = generation(tclient, music_id)
    assert row["outcome"] == "error"
    assert row["first_completed_seen_at"] is None
    assert create(tclient, "free again").status_code == 200


def test_post_moderation_flips_a_finished_song(tclient: FlaskClient, clock: FakeClock) -> None:
    music_id = created(tclient, "x [sim:post-moderated=30] [sim:latency=10]")
    clock.advance(10)
    done = status_body(tclient, music_id)
    assert (done["status"], done["statusFinal"]) == (2, True)
    assert tclient.get(urlsplit(done["audioURL"]).path).status_code == 200
    seen = clock.now
    assert created(tclient, "the account is free once the song is done")
    clock.advance(29.9)
    assert status_body(tclient, music_id)["status"] == 2
    clock.advance(0.1)
    struck = status_body(tclient, music_id)
    assert (struck["status"], struck["statusLabel"], struck["statusFinal"]) == (
        4,
        "moderated",
        True,
    )
    assert struck["audioURL"] is None
    assert tclient.get(urlsplit(done["audioURL"]).path).status_code == 404
    row = generation(tclient, music_id)
    assert row["outcome"] == "completed"
    assert row["post_moderated_at"] == row["ready_at"] + 30
    assert row["first_completed_seen_at"] == seen


def test_never_marker_keeps_processing_and_the_account_busy(
    tclient: FlaskClient, clock: FakeClock
) -> None:
    music_id = created(tclient, "x [sim:never] [sim:latency=5]")
    clock.advance(10_000)
    assert status_body(tclient, music_id)["status"] == 1
    assert create(tclient, "y").status_code == 429
    row = account_row(accounts(tclient), "useapi", f"{TOKEN}|")
    assert (row["in_flight"], row["rejected_busy"]) == (1, 1)
    assert generation(tclient, music_id)["ready_at"] is None


def test_unknown_status_marker_then_completes(tclient: FlaskClient, clock: FakeClock) -> None:
    music_id = created(tclient, "x [sim:unknown-status] [sim:latency=4]")
    body = status_body(tclient, music_id)
    assert (body["status"], body["statusFinal"]) == (3, False)
    clock.advance(4)
    assert status_body(tclient, music_id)["status"] == 2


def test_poll_5xx_and_garbage_markers(client: FlaskClient) -> None:
    failing = created(client, "x [sim:poll-5xx] [sim:latency=0]", account="a")
    assert_useapi_error(status(client, failing), 502)
    garbled = created(client, "y [sim:garbage] [sim:latency=0]", account="b")
    for _ in range(2):
        resp = status(client, garbled)
        assert resp.status_code == 200
        assert resp.get_json(silent=True) is None
        assert resp.get_data(as_text=True) == "<html>oops</html>"
    row = generation(client, garbled)
    assert row["poll_count"] == 2
    assert row["first_completed_seen_at"] is None
    assert generation(client, failing)["first_completed_seen_at"] is None


def test_poll_hang_marker_delays_the_status(client: FlaskClient) -> None:
    music_id = created(client, "x [sim:poll-hang=0.2] [sim:latency=0]")
    t0 = time.monotonic()
    assert status_body(client, music_id)["status"] == 2
    assert time.monotonic() - t0 >= 0.2


@pytest.mark.parametrize(("marker", "code"), [("[sim:submit-5xx]", 503), ("[sim:submit-401]", 401)])
def test_submit_markers_fail_and_create_nothing(
    client: FlaskClient, marker: str, code: int
) -> None:
    assert_useapi_error(create(client, f"x {marker}"), code)
    assert record(client, summary=1)["generations"] == []
    assert record(client)["requests"][-1]["prompt"] == f"x {marker}"


def test_submit_429_marker_is_a_simulated_busy_answer(client: FlaskClient) -> None:
    resp = create(client, "x [sim:submit-429]")
    assert (resp.status_code, resp.get_json()) == (429, BUSY)
    assert record(client, summary=1)["generations"] == []
    # Only real collisions count as rejections.
    assert all(a["rejected_busy"] == 0 for a in accounts(client)["accounts"])


def test_submit_hang_creates_before_answering(client: FlaskClient) -> None:
    resp, elapsed, (row,) = answered_late(
        client,
        lambda c: create(c, "x [sim:submit-hang=0.4]"),
        lambda: record(client, summary=1)["generations"],
    )
    assert resp.get_json()["musicId"] == row["id"]
    assert elapsed >= 0.4


def test_one_shot_faults_apply_in_useapi_shape(client: FlaskClient) -> None:
    client.post(
        "/_sim/faults",
        json={"submit": [{"status": 500}], "poll": [{"status": 503}, {"status_word": "7"}]},
    )
    assert_useapi_error(create(client, "x [sim:latency=0]"), 500)
    music_id = created(client, "x [sim:latency=0]")
    assert_useapi_error(status(client, music_id), 503)
    odd = status_body(client, music_id)
    assert (odd["status"], odd["statusLabel"], odd["audioURL"]) == (7, "7", None)
    assert generation(client, music_id)["first_completed_seen_at"] is None
    assert status_body(client, music_id)["status"] == 2
    assert generation(client, music_id)["poll_count"] == 3


# -- real sockets ------------------------------------------------------------------------------


def test_real_socket_round_trip(live: str) -> None:
    with requests.Session() as http:
        http.headers.update(AUTH)
        resp = http.post(f"{live}{CREATE}", json={"prompt": "p", "lyrics": "a\nb"}, timeout=5)
        assert resp.status_code == 200
        music_id = resp.json()["musicId"]
        deadline = time.monotonic() + 5
        url = f"{live}/v1/minimax/music/{quote(music_id, safe='')}"
        while (body := http.get(url, timeout=5).json())["status"] != 2:
            assert body["status"] in {0, 1}
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert body["audioURL"].startswith(f"{live}/_sim/audio/")
        audio = requests.get(body["audioURL"], timeout=5)
        assert audio.status_code == 200
        _, _, rate, frames = wav_info(audio.content)
        assert frames / rate == pytest.approx(5.0)
        rec = requests.get(f"{live}/_sim/record", timeout=5).json()
        polls = [r for r in rec["requests"] if r["kind"] == "poll"]
        assert polls and all(r["generation_id"] == music_id for r in polls)
        assert polls[0]["path"] == "/v1/minimax/music/{musicId}"


# -- scheduler DELETE (cancel) -----------------------------------------------------------------


def untrack(client: FlaskClient, music_id: str, headers: dict[str, str] | None = None) -> Any:
    return client.delete(
        f"/v1/minimax/scheduler/{quote(music_id, safe='')}",
        headers=AUTH if headers is None else headers,
    )


def test_scheduler_delete_is_recorded_and_does_not_stop_the_song(
    tclient: FlaskClient, clock: FakeClock
) -> None:
    music_id = created(tclient, "lofi [sim:latency=10]")
    clock.advance(2)
    resp = untrack(tclient, music_id)
    assert resp.status_code == 204
    cancels = [r for r in record(tclient)["requests"] if r["kind"] == "cancel"]
    assert [(r["method"], r["path"], r["generation_id"], r["status_code"]) for r in cancels] == [
        ("DELETE", "/v1/minimax/scheduler/{id}", music_id, 204)
    ]
    # Like useapi.net: the account stays busy, and the song is still made.
    assert_useapi_error(create(tclient, "second song"), 429)
    clock.advance(8.5)
    assert status_body(tclient, music_id)["status"] == 2
    assert_useapi_error(untrack(tclient, music_id), 404, f"Unable to locate running {music_id}")


def test_scheduler_delete_of_an_unknown_id_is_404_and_needs_auth(client: FlaskClient) -> None:
    assert_useapi_error(untrack(client, "user:1-minimax:default-music:999999"), 404)
    music_id = created(client, "lofi [sim:latency=10]")
    assert_useapi_error(untrack(client, music_id, headers={}), 401)

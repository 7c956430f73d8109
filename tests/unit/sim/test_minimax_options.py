"""The simulator refuses what MiniMax refuses of a music body (model, options, cover), records
the options it read, and serves the lyrics helper ``POST /v1/lyrics_generation``."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from app.sim import create_sim_app
from tests.unit.sim.support import make_settings, record

AUTH = {"Authorization": "Bearer mm-key-1"}
MUSIC = "/v1/music_generation"
LYRICS = "/v1/lyrics_generation"


@pytest.fixture
def client() -> FlaskClient:
    return create_sim_app(make_settings(SIM_AUDIO_SECONDS="1", SIM_LATENCY="0")).test_client()


def music(client: FlaskClient, **body: Any) -> Any:
    payload = {"model": "music-2.6", "prompt": "calm piano", "output_format": "url", **body}
    return client.post(MUSIC, json=payload, headers=AUTH)


def base_resp(resp: Any) -> tuple[int, str]:
    assert resp.status_code == 200
    status = resp.get_json()["base_resp"]
    return status["status_code"], status["status_msg"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"model": "music-9"}, "model 'music-9' is not supported"),
        ({"model": "music-2.5", "is_instrumental": True}, "is_instrumental is not supported"),
        ({"is_instrumental": "true"}, "is_instrumental must be a boolean"),
        ({"seed": -1}, "seed must be an integer"),
        ({"seed": 2**31}, "seed must be an integer"),
        ({"audio_setting": {"channel": 3}}, "audio_setting.channel must be 1 or 2"),
        ({"audio_url": "https://x/a.mp3"}, "only for the cover models"),
        ({"model": "music-cover", "prompt": "folk cover please"}, "exactly one of"),
        (
            {
                "model": "music-cover",
                "prompt": "folk cover please",
                "audio_url": "https://x/a.mp3",
                "audio_base64": "AAAA",
            },
            "exactly one of",
        ),
        (
            {
                "model": "music-cover",
                "prompt": "folk cover please",
                "audio_url": "https://x/a.mp3",
                "is_instrumental": False,
            },
            "is_instrumental is not supported by the cover models",
        ),
        (
            {"model": "music-cover", "prompt": "short", "audio_url": "https://x/a.mp3"},
            "prompt must be 10 to 300",
        ),
        (
            {"model": "music-cover-free", "prompt": "folk cover please", "cover_feature_id": "f1"},
            "lyrics are required with cover_feature_id",
        ),
    ],
)
def test_refused_as_invalid_params(client: FlaskClient, body: dict[str, Any], problem: str) -> None:
    code, message = base_resp(music(client, **body))
    assert code == 2013
    assert problem in message
    assert record(client, summary=1)["generations"] == []


def test_the_options_read_are_recorded(client: FlaskClient) -> None:
    resp = music(
        client, model="music-2.6-free", is_instrumental=True, seed=7, audio_setting={"channel": 2}
    )
    assert base_resp(resp) == (0, "success")
    cover = music(
        client, model="music-cover", prompt="folk cover please", audio_url="https://x/a.mp3"
    )
    assert base_resp(cover) == (0, "success")
    rows = record(client, summary=1)["generations"]
    assert [r["options"] for r in rows] == [
        {"is_instrumental": True, "seed": 7, "channel": 2},
        {"audio_url": True},
    ]


# ------------------------------------------------------------------ lyrics


def lyrics(client: FlaskClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post(LYRICS, json=body, headers=AUTH if headers is None else headers)


def test_write_a_full_song(client: FlaskClient) -> None:
    resp = lyrics(client, mode="write_full_song", prompt="rainy Tuesday")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["base_resp"] == {"status_code": 0, "status_msg": "success"}
    assert body["song_title"] == "Rainy Tuesday"
    assert body["style_tags"]
    assert "rainy Tuesday" in body["lyrics"]
    requests = record(client)["requests"]
    assert [(r["path"], r["status_code"]) for r in requests] == [(LYRICS, 200)]


def test_edit_keeps_the_lyrics_and_the_title(client: FlaskClient) -> None:
    body = lyrics(
        client, mode="edit", prompt="hope", lyrics="[Verse]\nGrey", title="Grey"
    ).get_json()
    assert body["lyrics"].startswith("[Verse]\nGrey")
    assert body["song_title"] == "Grey"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"mode": "edit", "prompt": "hope"}, 2013),  # edit needs lyrics
        ({"mode": "poem", "prompt": "x"}, 2013),
        ({"mode": "write_full_song", "prompt": 5}, 2013),
        ({"mode": "write_full_song", "prompt": "x [sim:base-resp=1002]"}, 1002),
    ],
)
def test_lyrics_failures(client: FlaskClient, body: dict[str, Any], code: int) -> None:
    assert base_resp(lyrics(client, **body))[0] == code


def test_lyrics_without_a_key(client: FlaskClient) -> None:
    assert base_resp(lyrics(client, headers={}, mode="write_full_song", prompt="x"))[0] == 1004


def test_lyrics_gateway_error(client: FlaskClient) -> None:
    resp = lyrics(client, mode="write_full_song", prompt="x [sim:http=503]")
    assert resp.status_code == 503
    assert resp.get_json()["type"] == "error"

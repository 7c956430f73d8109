"""MiniMax's options on POST /v1/music/generations (and /v2): is_instrumental,
lyrics_optimizer, seed, audio_setting.channel, and music-cover's reference track, each
allowed or refused per model by the catalog's ``limits``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_reference_audio import files, gate  # noqa: F401 - fixtures
from tests.conftest import GOOD_BODY, auth, job_rows

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
V2 = "/v2/generate/audio"
LYRICS = GOOD_BODY["lyrics"]
COVER_PROMPT = "Acoustic folk cover, warm"


def post(client: Any, key: str, **body: Any) -> Any:
    return client.post(
        URL, json={"catelogid": "music_gen", "prompt": "Pop", **body}, headers=auth(key)
    )


def error_of(response: Any) -> tuple[str, str | None, str]:
    error = response.get_json()["error"]
    return error["code"], error["param"], error["message"]


# (model, extra body, expected status, expected code, expected param)
CASES = [
    # music-2.6-free (MiniMax's own API) takes every option.
    ("music-2.6-free", {"is_instrumental": True}, 202, None, None),
    ("music-2.6-free", {"lyrics_optimizer": True}, 202, None, None),
    ("music-2.6-free", {"lyrics": LYRICS, "seed": 0}, 202, None, None),
    ("music-2.6-free", {"lyrics": LYRICS, "seed": 2**31 - 1}, 202, None, None),
    ("music-2.6-free", {"lyrics": LYRICS, "audio_setting": {"channel": 2}}, 202, None, None),
    ("music-2.6-free", {"lyrics": LYRICS, "is_instrumental": False}, 202, None, None),
    # Wrong types and ranges: 400 naming the field, whatever the model.
    ("music-2.6-free", {"lyrics": LYRICS, "seed": -1}, 400, "invalid_value", "seed"),
    ("music-2.6-free", {"lyrics": LYRICS, "seed": 2**31}, 400, "invalid_value", "seed"),
    ("music-2.6-free", {"lyrics": LYRICS, "seed": "7"}, 400, "invalid_value", "seed"),
    ("music-2.6-free", {"lyrics": LYRICS, "seed": 1.5}, 400, "invalid_value", "seed"),
    ("music-2.6-free", {"is_instrumental": "yes"}, 400, "invalid_value", "is_instrumental"),
    ("music-2.6-free", {"is_instrumental": 1}, 400, "invalid_value", "is_instrumental"),
    (
        "music-2.6-free",
        {"lyrics": LYRICS, "audio_setting": {"channel": 3}},
        400,
        "invalid_value",
        "audio_setting.channel",
    ),
    # Without a flag that makes them, lyrics stay required (the seed's rule 2).
    ("music-2.6-free", {}, 400, "missing_required_parameter", "lyrics"),
    ("music-2.6-free", {"is_instrumental": False}, 400, "missing_required_parameter", "lyrics"),
    # music-2.5 has no instrumental mode.
    ("music-2.5", {"is_instrumental": True}, 400, "unsupported_parameter", "is_instrumental"),
    ("music-2.5", {"lyrics_optimizer": True}, 202, None, None),
    # music-2.6 goes to AIMLAPI in this catalog: the flags, not seed or channel.
    ("music-2.6", {"is_instrumental": True}, 202, None, None),
    ("music-2.6", {"lyrics": LYRICS, "seed": 1}, 400, "unsupported_parameter", "seed"),
    (
        "music-2.6",
        {"lyrics": LYRICS, "audio_setting": {"channel": 1}},
        400,
        "unsupported_parameter",
        "audio_setting.channel",
    ),
    # The older models take none of them.
    ("music-2.0", {"is_instrumental": True}, 400, "unsupported_parameter", "is_instrumental"),
    ("music-2.0", {"lyrics": LYRICS, "seed": 3}, 400, "unsupported_parameter", "seed"),
]


@pytest.mark.parametrize(("model", "extra", "status", "code", "param"), CASES)
def test_options_per_model(
    client: Any,
    db: Any,
    api_key: str,
    model: str,
    extra: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    response = post(client, api_key, model=model, **extra)
    assert response.status_code == status, response.get_json()
    if code is None:
        return
    got_code, got_param, message = error_of(response)
    assert (got_code, got_param) == (code, param)
    if code == "unsupported_parameter":
        assert model in message and param in message
    assert job_rows(db) == []


def test_the_options_are_stored_in_the_job(client: Any, db: Any, api_key: str) -> None:
    response = post(
        client,
        api_key,
        model="music-2.6-free",
        is_instrumental=True,
        lyrics_optimizer=False,
        seed=42,
        audio_setting={"channel": 2, "sample_rate": 32000},
    )
    assert response.status_code == 202, response.get_json()
    (job,) = job_rows(db)
    assert job.request == {
        "prompt": "Pop",
        "output_format": "url",
        "audio_setting": {"channel": 2, "sample_rate": 32000},
        "seed": 42,
        "is_instrumental": True,  # a false flag is every model's default: not kept
    }


def test_blank_lyrics_of_an_instrumental_are_not_kept(client: Any, db: Any, api_key: str) -> None:
    response = post(client, api_key, model="music-2.6-free", is_instrumental=True, lyrics=" ")
    assert response.status_code == 202, response.get_json()
    (job,) = job_rows(db)
    assert "lyrics" not in job.request


# ------------------------------------------------------------------ cover


@pytest.mark.env(ALLOW_PRIVATE_URLS="1", REFERENCE_AUDIO_MAX_BYTES="3000000")
@pytest.mark.parametrize(
    ("extra", "status", "code", "param"),
    [
        # A 10 s track: too short for the legacy reference model, fine for a cover.
        ({"reference_audio_url": "/short.wav"}, 202, None, None),
        ({"reference_audio_url": "/short.wav", "lyrics": LYRICS}, 202, None, None),
        ({}, 400, "missing_required_parameter", "lyrics"),
        ({"lyrics": LYRICS}, 400, "missing_required_parameter", "reference_audio_url"),
        (
            {"reference_audio_url": "/seven-minutes.wav"},
            400,
            "invalid_reference_audio",
            "reference_audio_url",
        ),
        (
            {"reference_audio_url": "/short.wav", "lyrics": "la la"},
            400,
            "invalid_value",
            "lyrics",
        ),
        (
            {"reference_audio_url": "/short.wav", "is_instrumental": True},
            400,
            "unsupported_parameter",
            "is_instrumental",
        ),
        (
            {"reference_audio_url": "/short.wav", "lyrics_optimizer": True},
            400,
            "unsupported_parameter",
            "lyrics_optimizer",
        ),
    ],
)
def test_cover(
    client: Any,
    db: Any,
    api_key: str,
    files: str,  # noqa: F811 - the fixture
    extra: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    if "reference_audio_url" in extra:
        extra = {**extra, "reference_audio_url": files + extra["reference_audio_url"]}
    body = {"model": "music-cover", "catelogid": "music_gen", "prompt": COVER_PROMPT, **extra}
    response = client.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == status, response.get_json()
    if code is not None:
        assert error_of(response)[:2] == (code, param)
        assert job_rows(db) == []
    else:
        (job,) = job_rows(db)
        assert job.request["reference_audio_url"] == extra["reference_audio_url"]


@pytest.mark.env(ALLOW_PRIVATE_URLS="1", REFERENCE_AUDIO_MAX_BYTES="3000000")
def test_a_cover_prompt_has_cover_limits(client: Any, api_key: str, files: str) -> None:  # noqa: F811
    body = {
        "model": "music-cover",
        "catelogid": "music_gen",
        "prompt": "short",
        "reference_audio_url": f"{files}/short.wav",
    }
    response = client.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 400
    code, param, message = error_of(response)
    assert (code, param) == ("invalid_value", "prompt")
    assert "10 to 300" in message


# ------------------------------------------------------------------ /v2


def test_v2_takes_the_flags_aimlapi_takes(client: Any, db: Any, api_key: str) -> None:
    body = {"model": "music-2.6", "prompt": "Calm piano", "is_instrumental": True}
    response = client.post(V2, json=body, headers=auth(api_key))
    assert response.status_code == 201, response.get_json()
    (job,) = job_rows(db)
    assert job.request["is_instrumental"] is True

    refused = client.post(V2, json={**body, "seed": 4}, headers=auth(api_key))
    assert refused.status_code == 400
    assert "seed" in refused.get_json()["message"]
    refused = client.post(
        V2, json={**body, "model": "music-2.0", "lyrics": LYRICS}, headers=auth(api_key)
    )
    assert refused.status_code == 400
    assert "is_instrumental" in refused.get_json()["message"]

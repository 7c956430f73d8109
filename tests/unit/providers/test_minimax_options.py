"""MiniMax's options and lyrics helper as the adapters send and read them (AIMLAPI's too)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from app.providers import minimax
from app.providers.aimlapi import AimlapiAdapter
from app.providers.base import AccountConfig, GenerationRequest, ProviderError
from app.providers.minimax import MinimaxAdapter
from tests.unit.providers.adapter_contract import RecordingSession

BASE = "https://api.minimax.test"
KEY = "sk-minimax-test"
OK = {"base_resp": {"status_code": 0, "status_msg": "success"}}
SONG = {"data": {"audio": "https://x/song.mp3", "status": 2}, "trace_id": "t", **OK}


def adapter(session: RecordingSession) -> MinimaxAdapter:
    return MinimaxAdapter(
        AccountConfig(id="mm", provider="minimax", base_url=BASE, api_key=KEY), session=session
    )


def sent(rsps: responses.RequestsMock, index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(rsps.calls[index].request.body or b"")
    return body


def test_the_options_are_sent_when_asked_for(
    rsps: responses.RequestsMock, session: RecordingSession
) -> None:
    rsps.add(responses.POST, BASE + minimax.PATH, json=SONG)
    request = GenerationRequest(
        upstream_model="music-2.6",
        prompt="calm piano",
        is_instrumental=True,
        lyrics_optimizer=True,
        seed=0,
        audio_setting={"channel": 2},
    )
    adapter(session).submit(request)
    body = sent(rsps)
    assert (body["is_instrumental"], body["lyrics_optimizer"], body["seed"]) == (True, True, 0)
    assert body["audio_setting"] == {"channel": 2}
    assert "lyrics" not in body


def test_false_flags_are_not_sent(rsps: responses.RequestsMock, session: RecordingSession) -> None:
    # The cover models refuse the flags even when false.
    rsps.add(responses.POST, BASE + minimax.PATH, json=SONG)
    adapter(session).submit(
        GenerationRequest(
            upstream_model="music-cover", prompt="folk cover", reference_audio_url="https://x/a.mp3"
        )
    )
    assert set(sent(rsps)) == {"model", "prompt", "output_format", "stream", "audio_url"}


def test_aimlapi_gets_the_flags_but_no_channel(
    rsps: responses.RequestsMock, session: RecordingSession
) -> None:
    base = "https://api.aimlapi.test"
    rsps.add(responses.POST, base + "/v2/generate/audio", json={"id": "g1", "status": "queued"})
    aimlapi = AimlapiAdapter(
        AccountConfig(id="a", provider="aimlapi", base_url=base, api_key="k"), session=session
    )
    aimlapi.submit(
        GenerationRequest(
            upstream_model="minimax/music-2.6",
            prompt="p",
            is_instrumental=True,
            audio_setting={"channel": 2, "sample_rate": 32000},
        )
    )
    body = sent(rsps)
    assert body["is_instrumental"] is True
    assert body["audio_setting"] == {"sample_rate": 32000, "audio_sample_rate": 32000}


# ------------------------------------------------------------------ lyrics


def test_write_lyrics_sends_the_documented_body(
    rsps: responses.RequestsMock, session: RecordingSession
) -> None:
    answer = {"song_title": "Open Road", "style_tags": "Pop, Upbeat", "lyrics": "[Verse]\nGo", **OK}
    rsps.add(responses.POST, BASE + minimax.LYRICS_PATH, json=answer)
    result = adapter(session).write_lyrics("write_full_song", "a road trip", None, None)
    assert result == {"title": "Open Road", "style_tags": "Pop, Upbeat", "lyrics": "[Verse]\nGo"}
    assert sent(rsps) == {"mode": "write_full_song", "prompt": "a road trip"}
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"


def test_style_tags_as_a_list_are_joined(
    rsps: responses.RequestsMock, session: RecordingSession
) -> None:
    answer = {"song_title": "T", "style_tags": ["Rock", "Live"], "lyrics": "la", **OK}
    rsps.add(responses.POST, BASE + minimax.LYRICS_PATH, json=answer)
    result = adapter(session).write_lyrics("edit", "louder", "la", "T")
    assert result["style_tags"] == "Rock, Live"
    assert sent(rsps) == {"mode": "edit", "prompt": "louder", "lyrics": "la", "title": "T"}


@pytest.mark.parametrize(
    ("answer", "code", "retryable"),
    [
        (
            {"base_resp": {"status_code": 2013, "status_msg": "invalid params"}},
            "invalid_request",
            False,
        ),
        (
            {"base_resp": {"status_code": 1002, "status_msg": "rate limit"}},
            "upstream_rate_limited",
            True,
        ),
        (
            {"base_resp": {"status_code": 1026, "status_msg": "sensitive"}},
            "content_moderated",
            False,
        ),
        ({"song_title": "T", "lyrics": "  ", **OK}, "upstream_invalid_result", False),
    ],
)
def test_lyrics_failures(
    rsps: responses.RequestsMock,
    session: RecordingSession,
    answer: dict[str, Any],
    code: str,
    retryable: bool,
) -> None:
    rsps.add(responses.POST, BASE + minimax.LYRICS_PATH, json=answer)
    with pytest.raises(ProviderError) as raised:
        adapter(session).write_lyrics("write_full_song", "p", None, None)
    assert (raised.value.code, raised.value.retryable) == (code, retryable)

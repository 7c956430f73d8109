"""Live checks against the real upstreams: one real song per protocol.

Each test builds its adapter directly (no database, no worker) for the upstream's real base URL
and is skipped unless that upstream's key is in the environment:

    MINIMAX_API_KEY=... AIMLAPI_API_KEY=... APILAPLAS_API_KEY=... USEAPI_API_KEY=... \\
        pytest -m live tests/live

Optional: ``USEAPI_ACCOUNT`` (the useapi.net MiniMax account to use), ``LIVE_TIMEOUT`` (seconds
to wait for a song, default 600). Every test makes, and pays for, one generation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.http.downloads import Downloads
from app.providers import get_adapter
from app.providers.base import (
    AccountConfig,
    Adapter,
    GenerationRequest,
    PollResult,
    PollState,
)
from app.storage import AudioInfo, LocalStorage
from config import load_settings

LIVE_TIMEOUT = float(os.environ.get("LIVE_TIMEOUT", "600"))
POLL_EVERY = 10.0

pytestmark = [pytest.mark.live, pytest.mark.timeout(LIVE_TIMEOUT + 120)]

PROMPT = "Indie folk, warm acoustic guitar, gentle and hopeful, a quiet morning"
LYRICS = (
    "[Verse]\nMorning light upon the hill\nThe kettle sings, the house is still\n"
    "[Chorus]\nAnd I will wait for you\nUntil the sky is blue"
)


def key_or_skip(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.skip(f"{name} is not set: live test skipped")
    return value


def adapter_for(
    provider: str,
    base_url: str,
    key_env: str,
    *,
    read_timeout: float = 60.0,
    upstream_account: str | None = None,
) -> Adapter:
    account = AccountConfig(
        id=f"live-{provider}",
        provider=provider,
        base_url=base_url,
        api_key=key_or_skip(key_env),
        connect_timeout=10.0,
        read_timeout=read_timeout,
        upstream_account=upstream_account,
    )
    adapter = get_adapter(account)
    assert adapter.provider == provider
    return adapter


def poll_until_done(adapter: Adapter, generation_id: str) -> PollResult:
    deadline = time.monotonic() + LIVE_TIMEOUT
    result = adapter.poll(generation_id)
    while result.state is PollState.PENDING:
        assert time.monotonic() < deadline, (
            f"{adapter.provider}: {generation_id} still {result.raw_status!r} after "
            f"{LIVE_TIMEOUT:g}s"
        )
        time.sleep(POLL_EVERY)
        result = adapter.poll(generation_id)
    return result


def assert_real_audio(result: PollResult, tmp_path: Path) -> AudioInfo:
    """The song is real audio: stored (and sniffed) exactly as the engine stores it."""
    assert result.state is PollState.SUCCEEDED, (result.error_code, result.error_message)
    storage = LocalStorage(tmp_path / "audio")
    if result.audio_bytes is not None:
        key, info = storage.store_bytes(result.audio_bytes, "live", max_bytes=100_000_000)
    else:
        assert result.audio_url, result
        key, info = storage.fetch(
            result.audio_url,
            "live",
            max_bytes=100_000_000,
            timeout=(10.0, 120.0),
            downloads=Downloads(load_settings({})),
        )
    assert storage.exists(key)
    assert info.format in {"mp3", "wav", "flac", "m4a", "ogg"}, info
    assert info.duration_ms >= 5_000, info
    assert info.size >= 10_000, info
    return info


@pytest.mark.parametrize("output_format", ["url", "hex"])
def test_minimax_makes_a_real_song(tmp_path: Path, output_format: str) -> None:
    # Synchronous: the call is held open until the song exists.
    adapter = adapter_for(
        "minimax", "https://api.minimax.io", "MINIMAX_API_KEY", read_timeout=LIVE_TIMEOUT
    )
    submission = adapter.submit(
        GenerationRequest(
            upstream_model="music-2.0",
            prompt=PROMPT,
            lyrics=LYRICS,
            output_format=output_format,
            audio_setting={"sample_rate": 44100, "bitrate": 256000, "format": "mp3"},
        )
    )
    assert submission.result is not None, "MiniMax answered without a result"
    if output_format == "hex":
        assert submission.result.audio_bytes
    else:
        assert submission.result.audio_url
    assert_real_audio(submission.result, tmp_path)


def test_aimlapi_makes_a_real_song(tmp_path: Path) -> None:
    adapter = adapter_for("aimlapi", "https://api.aimlapi.com", "AIMLAPI_API_KEY")
    submission = adapter.submit(
        GenerationRequest(upstream_model="minimax/music-2.6", prompt=PROMPT, lyrics=LYRICS)
    )
    assert submission.generation_id and submission.result is None
    assert_real_audio(poll_until_done(adapter, submission.generation_id), tmp_path)


def test_apilaplas_makes_a_real_song(tmp_path: Path) -> None:
    # minimax-music takes an optional reference track; none is sent.
    adapter = adapter_for("apilaplas", "https://api.apilaplas.com", "APILAPLAS_API_KEY")
    submission = adapter.submit(
        GenerationRequest(upstream_model="minimax-music", prompt=PROMPT, lyrics=LYRICS[:600])
    )
    assert submission.generation_id and submission.result is None
    assert_real_audio(poll_until_done(adapter, submission.generation_id), tmp_path)


def test_useapi_makes_a_real_song(tmp_path: Path) -> None:
    adapter = adapter_for(
        "useapi",
        "https://api.useapi.net",
        "USEAPI_API_KEY",
        upstream_account=os.environ.get("USEAPI_ACCOUNT") or None,
    )
    submission = adapter.submit(
        GenerationRequest(upstream_model="music-1.5", prompt=PROMPT, lyrics=LYRICS)
    )
    assert submission.generation_id and submission.result is None
    assert_real_audio(poll_until_done(adapter, submission.generation_id), tmp_path)

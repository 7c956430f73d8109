"""Pooled sessions (app.http.sessions): upstream calls, audio downloads and webhook sends each keep
their connection between calls, counted by a keep-alive server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from app.db import Database
from app.http.downloads import Downloads
from app.providers.aimlapi import AimlapiAdapter
from app.sim.audio import wav_bytes
from app.storage import LocalStorage
from app.webhooks.delivery import Dispatcher
from config import Settings
from tests.unit.http.keepalive import keepalive_server, url_of
from tests.unit.http.support import ALLOW_PRIVATE, TIMEOUT, account

WAV = wav_bytes(8000, 8000)
ANSWERS = {
    "/v2/generate/audio": ("application/json", b'{"status": "queued"}'),
    "/song.wav": ("audio/wav", WAV),
    "/hook": ("text/plain", b"ok"),
}


@pytest.fixture
def keeper() -> Iterator[ThreadingHTTPServer]:
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        content_type, body = ANSWERS[path.partition("?")[0]]
        return 200, {"Content-Type": content_type}, body

    with keepalive_server(answer) as httpd:
        yield httpd


def test_upstream_calls_keep_their_connection(keeper: ThreadingHTTPServer) -> None:
    adapter = AimlapiAdapter(account(url_of(keeper)))
    for _ in range(3):
        adapter.poll("gen-1")
    assert keeper.connections == 1  # type: ignore[attr-defined]


@ALLOW_PRIVATE
@pytest.mark.parametrize("trusted", [True, False])
def test_audio_downloads_keep_their_connection(
    settings: Settings, tmp_path: Path, keeper: ThreadingHTTPServer, trusted: bool
) -> None:
    storage = LocalStorage(tmp_path)
    downloads = Downloads(settings)
    for n in range(3):
        storage.fetch(
            url_of(keeper) + "/song.wav",
            f"job-{n}",
            max_bytes=1 << 20,
            timeout=TIMEOUT,
            downloads=downloads,
            trusted=url_of(keeper) if trusted else None,
        )
    assert keeper.connections == 1  # type: ignore[attr-defined]


@ALLOW_PRIVATE
def test_webhook_sends_keep_their_connection(
    settings: Settings, db: Database, keeper: ThreadingHTTPServer
) -> None:
    dispatcher = Dispatcher(settings, db)
    for _ in range(3):
        assert dispatcher.send(url_of(keeper) + "/hook", {}, "{}").delivered
    assert keeper.connections == 1  # type: ignore[attr-defined]

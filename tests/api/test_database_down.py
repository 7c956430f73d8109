"""The API while its database cannot be reached: 503 with Retry-After, never a 500."""

from __future__ import annotations

import socket

import pytest

from app.web import create_app
from config import load_settings
from tests.conftest import GOOD_BODY, auth


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/balance", None),
        ("GET", "/v1/music/generations/luid_01m7z6rkxcmx0h7hnjr0bxppzc", None),
        ("GET", "/v1/music/generations", None),
        ("POST", "/v1/music/generations", GOOD_BODY),
        ("POST", "/v2/generate/audio", {"model": "music-2.6", "prompt": "a", "lyrics": "b"}),
    ],
)
def test_a_database_that_refuses_connections_is_503_with_retry_after(
    env: dict[str, str], method: str, path: str, body: dict[str, str] | None
) -> None:
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port()}/chorus"
    client = create_app(load_settings({**env, "DATABASE_URL": url})).test_client()

    answer = client.open(path, method=method, json=body, headers=auth("chs_any"))

    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 503

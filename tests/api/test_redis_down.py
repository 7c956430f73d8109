"""The API while Redis cannot be reached: 503 with Retry-After on the routes that count requests
in it, never a 500; the routes that do not use it keep answering."""

from __future__ import annotations

from typing import Any

import pytest

from app.web import create_app
from config import load_settings
from tests.api.test_database_down import closed_port
from tests.conftest import GOOD_BODY, auth

V2_BODY = {"model": "music-2.6", "prompt": "a", "lyrics": "b"}


@pytest.fixture
def redis_down_client(env: dict[str, str]) -> Any:
    """An app whose Redis is a loopback port nothing listens on: refused at once."""
    settings = load_settings({**env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"})
    return create_app(settings).test_client()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/balance", None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/usage", None),
        ("GET", "/v1/music/generations/luid_01m7z6rkxcmx0h7hnjr0bxppzc", None),
        ("GET", "/v1/music/generations", None),
        ("POST", "/v1/music/generations", GOOD_BODY),
        ("POST", "/v1/music/generations/luid_01m7z6rkxcmx0h7hnjr0bxppzc/cancel", None),
        ("GET", "/v1/webhooks/endpoint", None),
        ("GET", "/v2/generate/audio?generation_id=luid_01m7z6rkxcmx0h7hnjr0bxppzc", None),
        ("POST", "/v2/generate/audio", V2_BODY),
    ],
)
def test_a_redis_that_refuses_connections_is_503_with_retry_after(
    redis_down_client: Any, api_key: str, method: str, path: str, body: dict[str, str] | None
) -> None:
    answer = redis_down_client.open(path, method=method, json=body, headers=auth(api_key))

    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers["Retry-After"] == "1"
    if path.startswith("/v2/"):
        assert answer.json["statusCode"] == 503
    else:
        assert answer.json["error"]["code"] == "unavailable"


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_routes_that_do_not_count_requests_answer_without_redis(
    redis_down_client: Any, path: str
) -> None:
    assert redis_down_client.get(path).status_code == 200


def test_nothing_is_queued_while_redis_is_down(
    redis_down_client: Any, api_key: str, db: Any
) -> None:
    from tests.conftest import job_rows

    answer = redis_down_client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    assert answer.status_code == 503
    assert job_rows(db) == []

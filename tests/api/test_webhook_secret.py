"""The signing secret through the API: read, rotate, and the bound on rotating."""

from __future__ import annotations

from typing import Any

from standardwebhooks import Webhook

from app.db import utcnow
from app.webhooks import signing
from tests.conftest import auth

BODY = '{"type":"music.generation.succeeded"}'


def test_rotating_past_the_hourly_bound_is_refused_and_the_secret_keeps_signing(
    client: Any, api_key: str
) -> None:
    first = client.get("/v1/webhooks/secret", headers=auth(api_key)).get_json()["key"]
    keys = [first]
    for _ in range(signing.ROTATIONS_PER_HOUR - 1):
        answer = client.post("/v1/webhooks/secret/rotate", headers=auth(api_key))
        assert answer.status_code == 200
        keys.append(answer.get_json()["key"])
    refused = client.post("/v1/webhooks/secret/rotate", headers=auth(api_key))
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_rotations"
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    # Nothing changed: the last secret made is still the current one.
    current = client.get("/v1/webhooks/secret", headers=auth(api_key)).get_json()["key"]
    assert current == keys[-1]
    headers = signing.headers([current], "msg_1", utcnow(), BODY)
    Webhook(current).verify(BODY, headers)

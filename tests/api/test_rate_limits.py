"""Per-key request rate limits, counted in Redis so every web process shares them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")
URL = "/v1/music/generations"


@pytest.mark.env(RATE_LIMIT="5 per minute")
def test_over_the_limit_is_429_with_retry_after(app: Any, api_key: str, other_key: str) -> None:
    # Two test clients stand for two web processes: the count lives in Redis, not in either.
    first, second = app.test_client(), app.test_client()
    codes = [
        c.post(URL, json=GOOD_BODY, headers=auth(api_key)).status_code
        for c in (first, second, first, second, first)
    ]
    assert codes == [202] * 5
    refused = second.get(f"{URL}/luid_x", headers=auth(api_key))
    assert refused.status_code == 429
    body = refused.get_json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    # Limits are per key: another tenant is unaffected.
    assert first.post(URL, json=GOOD_BODY, headers=auth(other_key)).status_code == 202

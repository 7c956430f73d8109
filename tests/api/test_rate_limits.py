"""Per-key request rate limits, counted in Redis so every web process shares them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.api.limits import RateLimit
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


@pytest.mark.env(RATE_LIMIT="5 per minute")
def test_made_up_keys_spend_their_addresss_budget(app: Any, api_key: str) -> None:
    # Each made-up key would have a fresh budget of its own; their failures are counted
    # against the address they come from.
    first, second = app.test_client(), app.test_client()
    guesses = [
        c.get(f"{URL}/luid_x", headers=auth(f"chs_guess{n}")).status_code
        for n, c in enumerate((first, second, first, second, first))
    ]
    assert guesses == [403] * 5
    for client, key in ((first, "chs_guess5"), (second, api_key)):
        refused = client.post(URL, json=GOOD_BODY, headers=auth(key))
        assert refused.status_code == 429, refused.get_json()
        assert "invalid API key" in refused.get_json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    # Another address is not held up by this one's failures.
    elsewhere = first.post(
        URL, json=GOOD_BODY, headers=auth(api_key), environ_base={"REMOTE_ADDR": "10.0.0.2"}
    )
    assert elsewhere.status_code == 202


class CountingStorage:
    """The limiter's Redis storage, counting the calls that reach Redis."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.calls = 0

    def incr(self, *args: Any, **kwargs: Any) -> int:
        self.calls += 1
        return int(self.storage.incr(*args, **kwargs))

    def get_expiry(self, key: str) -> float:
        self.calls += 1
        return float(self.storage.get_expiry(key))


def two_processes(settings: Any) -> tuple[RateLimit, RateLimit, list[CountingStorage]]:
    """Two limiters on the same Redis, as two web processes have."""
    limiters = RateLimit(settings, set()), RateLimit(settings, set())
    counters = []
    for limiter in limiters:
        counter = CountingStorage(limiter.storage)
        limiter._storage = counter  # type: ignore[assignment]
        counters.append(counter)
    return limiters[0], limiters[1], counters


@pytest.mark.env(RATE_LIMIT="1000 per minute")
def test_processes_lease_blocks_and_together_never_pass_the_limit(settings: Any) -> None:
    first, second, counters = two_processes(settings)
    assert first.block == 10
    admitted = [0, 0]
    for n in range(1200):
        which = n % 2
        if (first, second)[which].take("key:abc")[0]:
            admitted[which] += 1
    # Never more than the limit; at most one unused block per process short of it.
    assert 1000 - 2 * (first.block - 1) <= sum(admitted) <= 1000
    # About one Redis round trip per block (two where the window was opened elsewhere).
    assert sum(c.calls for c in counters) <= 2 * (sum(admitted) // first.block + 4)
    # Another key has its own budget.
    assert first.take("key:other")[0]


@pytest.mark.env(RATE_LIMIT="50 per minute")
def test_a_small_limit_is_counted_request_by_request(settings: Any) -> None:
    first, second, _ = two_processes(settings)
    assert first.block == 1
    results = [(first, second)[n % 2].take("key:small")[0] for n in range(60)]
    assert results == [True] * 50 + [False] * 10


@pytest.mark.env(RATE_LIMIT="40 per 2 second")
def test_a_lease_ends_with_its_window(settings: Any) -> None:
    limiter = RateLimit(settings, set())
    limiter.block = 4  # leased in blocks, whatever the limit
    taken = [limiter.take("key:w") for _ in range(45)]
    assert [ok for ok, _ in taken] == [True] * 40 + [False] * 5
    refused_until = taken[-1][1]
    assert 0 < refused_until - time.time() <= 2
    time.sleep(max(0.0, refused_until - time.time()) + 1.1)
    assert limiter.take("key:w")[0]

"""The request record across the three protocols: protocol and account per generation, and
per-account concurrency counters."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.unit.sim.support import FakeClock, account_row, clocked_client, record

KEY = "sk-shared"
AUTH = {"Authorization": f"Bearer {KEY}"}


def aimlapi(client: FlaskClient, prompt: str, key: str = KEY) -> str:
    resp = client.post(
        "/v2/generate/audio",
        json={"model": "minimax/music-2.6", "prompt": prompt},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 201
    gen_id: str = resp.get_json()["id"]
    return gen_id


def test_every_generation_names_its_protocol_and_account() -> None:
    clock = FakeClock()
    client = clocked_client(clock, SIM_AUDIO_SECONDS="0.1")
    a = aimlapi(client, "one [sim:latency=0]")
    m = client.post(
        "/v1/music_generation",
        json={"model": "music-2.6", "prompt": "two [sim:latency=0]"},
        headers=AUTH,
    ).get_json()["trace_id"]
    u = client.post(
        "/v1/minimax/music/create",
        json={"prompt": "three [sim:latency=0]", "account": "acc"},
        headers=AUTH,
    ).get_json()["musicId"]
    for summary in (True, False):
        rec: dict[str, Any] = record(client, summary=1) if summary else record(client)
        rows = {g["id"]: g for g in rec["generations"]}
        assert (rows[a]["protocol"], rows[a]["account"]) == ("aimlapi", KEY)
        assert (rows[m]["protocol"], rows[m]["account"]) == ("minimax", KEY)
        assert (rows[u]["protocol"], rows[u]["account"]) == ("useapi", f"{KEY}|acc")
        keys = {(x["protocol"], x["account"]) for x in rec["accounts"]}
        assert keys == {("aimlapi", KEY), ("minimax", KEY), ("useapi", f"{KEY}|acc")}
        for row in rec["accounts"]:
            assert set(row) == {
                "protocol", "account", "max_concurrent", "in_flight", "rejected_busy"
            }  # fmt: skip
            assert (row["max_concurrent"], row["in_flight"], row["rejected_busy"]) == (1, 0, 0)
    # The same request on another protocol is not a resubmission.
    assert all(g["submit_count"] == 1 for g in record(client)["generations"])


def test_aimlapi_max_concurrent_counts_overlapping_generations() -> None:
    clock = FakeClock()
    client = clocked_client(clock)
    for i in range(3):
        aimlapi(client, f"song {i} [sim:latency=10]")
        clock.advance(1)
    aimlapi(client, "other key [sim:latency=10]", key="sk-other")
    row = account_row(record(client, summary=1), "aimlapi", KEY)
    assert (row["max_concurrent"], row["in_flight"]) == (3, 3)
    clock.advance(7.5)  # now +10.5: the first song (ready at +10) is done
    assert account_row(record(client, summary=1), "aimlapi", KEY)["in_flight"] == 2
    aimlapi(client, "late [sim:latency=10]")
    row = account_row(record(client, summary=1), "aimlapi", KEY)
    assert (row["max_concurrent"], row["in_flight"]) == (3, 3)
    clock.advance(100)
    row = account_row(record(client, summary=1), "aimlapi", KEY)
    assert (row["max_concurrent"], row["in_flight"], row["rejected_busy"]) == (3, 0, 0)
    assert account_row(record(client), "aimlapi", "sk-other")["max_concurrent"] == 1


def test_failed_submits_count_nowhere_and_reset_forgets_accounts() -> None:
    clock = FakeClock()
    client = clocked_client(clock)
    client.post(
        "/v2/generate/audio", json={"model": "m", "prompt": "x [sim:submit-5xx]"}, headers=AUTH
    )
    assert record(client)["accounts"] == []
    aimlapi(client, "x [sim:never]")
    assert account_row(record(client), "aimlapi", KEY)["in_flight"] == 1
    assert client.post("/_sim/reset").status_code == 200
    assert record(client)["accounts"] == []
    assert record(client, summary=1)["accounts"] == []

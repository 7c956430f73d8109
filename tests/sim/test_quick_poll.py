"""The simulator's quick status GET answers and records exactly what its Flask route does."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from app.sim import sim_state
from tests.sim.support import FakeClock, clocked_app

API = "/v2/generate/audio"
AUTH = {"Authorization": "Bearer sk-test-123"}


@pytest.fixture
def app(clock: FakeClock) -> Flask:
    app = clocked_app(clock)
    app.config["flask_requests"] = 0

    @app.before_request
    def count() -> None:
        app.config["flask_requests"] += 1

    return app


def created(app: Flask, prompt: str) -> str:
    resp = app.test_client().post(
        API, json={"model": "minimax/music-2.6", "prompt": prompt}, headers=AUTH
    )
    assert resp.status_code == 201
    gen_id: str = resp.get_json()["id"]
    return gen_id


def both_ways(app: Flask, gen_id: str, **headers: str) -> tuple[Any, Any]:
    """One GET through the quick path (when it applies), then one through Flask alone."""
    client = app.test_client()
    query = {"generation_id": gen_id}
    quick = client.get(API, query_string=query, headers={**AUTH, **headers})
    wrapped = app.wsgi_app
    app.wsgi_app = wrapped.app  # type: ignore[attr-defined,method-assign]
    try:
        plain = client.get(API, query_string=query, headers={**AUTH, **headers})
    finally:
        app.wsgi_app = wrapped  # type: ignore[method-assign]
    return quick, plain


@pytest.mark.parametrize(
    ("prompt", "wait"),
    [
        ("calm [sim:latency=10]", 0.0),  # queued
        ("calm [sim:latency=10]", 5.0),  # generating
        ("calm [sim:latency=10]", 11.0),  # completed, with the audio link
        ("calm [sim:latency=10] [sim:error]", 11.0),  # error, with its name and message
        ("calm [sim:latency=10] [sim:unknown-status]", 5.0),
    ],
)
def test_plain_polls_skip_flask_and_answer_as_the_route(
    app: Flask, clock: FakeClock, prompt: str, wait: float
) -> None:
    gen_id = created(app, prompt)
    clock.advance(wait)
    before = app.config["flask_requests"]
    quick, plain = both_ways(app, gen_id)
    assert app.config["flask_requests"] == before + 1  # only the second went through Flask
    assert quick.status_code == plain.status_code == 200
    assert quick.get_json() == plain.get_json()
    assert quick.headers["Content-Type"] == plain.headers["Content-Type"]
    assert quick.headers["Content-Length"] == plain.headers["Content-Length"]
    entries = sim_state(app).record()["requests"][-2:]
    for entry in entries:
        entry.pop("seq")
    assert entries[0] == entries[1]
    generation = sim_state(app).get(gen_id)
    assert generation is not None and generation.poll_count == 2
    if quick.get_json()["status"] == "completed":
        assert generation.first_completed_seen_at == clock.now


def test_what_the_quick_path_leaves_to_flask(app: Flask) -> None:
    client = app.test_client()
    marked = {p: created(app, f"x [sim:{p}]") for p in ("garbage", "poll-5xx")}
    plain = created(app, "x")
    cases: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({"generation_id": plain}, {}, 401),  # no key
        ({}, AUTH, 400),  # no id
        ({"generation_id": "nope"}, AUTH, 404),
        ({"generation_id": marked["garbage"]}, AUTH, 200),
        ({"generation_id": marked["poll-5xx"]}, AUTH, 502),
    ]
    for query, headers, status in cases:
        before = app.config["flask_requests"]
        resp = client.get(API, query_string=query, headers=headers)
        assert resp.status_code == status
        assert app.config["flask_requests"] == before + 1
    # A queued fault is Flask's to fire, then plain polls go the quick way again.
    client.post("/_sim/faults", json={"poll": [{"status": 503}]})
    assert client.get(API, query_string={"generation_id": plain}, headers=AUTH).status_code == 503
    before = app.config["flask_requests"]
    assert client.get(API, query_string={"generation_id": plain}, headers=AUTH).status_code == 200
    assert app.config["flask_requests"] == before

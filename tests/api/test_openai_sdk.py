"""The openai Python SDK, pointed at Chorus's ``/v1``, raises its own typed errors.

A client written for OpenAI changes only its base URL and key. These tests run the SDK
against a real HTTP server (werkzeug's, in a thread) serving the app on the test database:
its generic ``client.post`` / ``client.get`` for the music routes, ``client.models.list()``
for ``/v1/models``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from flask import request
from werkzeug.serving import make_server

from app.db import Database
from tests.conftest import GOOD_BODY, funded_key

GENERATIONS = "/music/generations"


@pytest.fixture
def base_url(app: Any, catalog: dict[str, Any]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    thread.join(timeout=10)


def sdk(base_url: str, key: str) -> openai.OpenAI:
    # No retries: each test is about one answer, and the SDK would retry a 429.
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


def test_submit_and_read_a_job(base_url: str, api_key: str) -> None:
    client = sdk(base_url, api_key)
    job: Any = client.post(GENERATIONS, body=GOOD_BODY, cast_to=object)
    assert job["object"] == "music.generation"
    assert job["id"].startswith("luid_")
    assert job["status"] == "QUEUED"

    again: Any = client.get(f"{GENERATIONS}/{job['id']}", cast_to=object)
    assert again["id"] == job["id"]
    assert again["model"] == GOOD_BODY["model"]


def test_models_list(base_url: str, api_key: str) -> None:
    models = sdk(base_url, api_key).models.list()
    ids = [model.id for model in models]
    assert "music-2.6" in ids
    assert all(model.object == "model" for model in models)


@pytest.mark.parametrize("key", ["sk-not-a-chorus-key", None])
def test_unknown_or_missing_key_is_permission_denied(
    app: Any, base_url: str, key: str | None
) -> None:
    sent: list[str | None] = []
    app.before_request(lambda: sent.append(request.headers.get("Authorization")))
    client = sdk(base_url, key or "unused")
    # The SDK insists on a key; omitting its Authorization header sends none at all.
    headers: dict[str, Any] = {} if key else {"Authorization": openai.Omit()}
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.post(GENERATIONS, body=GOOD_BODY, cast_to=object, options={"headers": headers})
    assert raised.value.status_code == 403
    assert raised.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list(extra_headers=headers)
    assert sent == ([f"Bearer {key}"] * 2 if key else [None, None])


def test_missing_field_is_bad_request_with_param(base_url: str, api_key: str) -> None:
    body = {k: v for k, v in GOOD_BODY.items() if k != "lyrics"}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(base_url, api_key).post(GENERATIONS, body=body, cast_to=object)
    assert raised.value.status_code == 400
    assert raised.value.param == "lyrics"
    assert raised.value.code == "missing_required_parameter"
    assert "Missing required parameter: lyrics" in raised.value.message


def test_unknown_job_is_not_found(base_url: str, api_key: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(base_url, api_key).get(f"{GENERATIONS}/luid_01m7z6rkxcmx0h7hnjr0bxppzc", cast_to=object)
    assert raised.value.status_code == 404
    assert raised.value.code == "not_found"


def test_unfunded_org_is_rate_limited_with_insufficient_quota(base_url: str, db: Database) -> None:
    broke = funded_key(db, "broke", amount=0)
    with pytest.raises(openai.RateLimitError) as raised:
        sdk(base_url, broke).post(GENERATIONS, body=GOOD_BODY, cast_to=object)
    assert raised.value.status_code == 429
    assert raised.value.code == "insufficient_quota"
    assert raised.value.type == "rate_limit_error"


@pytest.mark.parametrize("name", ["music-2.6", "minimax/music-1.5", "music-cover"])
def test_models_retrieve(base_url: str, api_key: str, name: str) -> None:
    client = sdk(base_url, api_key)
    model = client.models.retrieve(name)
    assert (model.id, model.object, model.owned_by) == (name, "model", "chorus")
    assert isinstance(model.created, int)
    # Chorus's own fields, as the list shows them.
    listed = next(m for m in client.models.list() if m.id == name)
    assert model.model_dump() == listed.model_dump()


def test_models_retrieve_unknown_is_not_found(base_url: str, api_key: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(base_url, api_key).models.retrieve("minimax/music-9")
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"

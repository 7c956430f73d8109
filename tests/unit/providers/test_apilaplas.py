"""The Apilaplas adapter: AIMLAPI's protocol under Apilaplas's base URL (providers.md §2.4)."""

from __future__ import annotations

import json
from typing import Any

import responses

from app.providers import aimlapi, get_adapter
from app.providers.aimlapi import AimlapiAdapter
from app.providers.apilaplas import ApilaplasAdapter
from app.providers.base import AccountConfig, GenerationRequest, PollState
from tests.unit.providers.test_aimlapi import TestAimlapiContract as _AimlapiContract

BASE = "https://api.apilaplas.com"


class TestApilaplasContract(_AimlapiContract):
    adapter_cls = ApilaplasAdapter
    provider = "apilaplas"
    base_url = BASE
    api_key = "laplas-contract-key"


def account() -> AccountConfig:
    return AccountConfig(id="laplas-1", provider="apilaplas", base_url=BASE, api_key="lk")


def test_it_is_aimlapi_under_another_name() -> None:
    adapter = get_adapter(account())
    assert type(adapter) is ApilaplasAdapter
    assert isinstance(adapter, AimlapiAdapter)
    assert adapter.provider == "apilaplas"
    assert adapter.mode == "async"


def test_submit_and_poll_go_to_the_apilaplas_base() -> None:
    adapter = ApilaplasAdapter(account())
    url = BASE + aimlapi.PATH
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, url, json={"id": "g:minimax-music", "status": "queued"})
        rsps.add(
            responses.GET,
            url,
            json={
                "id": "g:minimax-music",
                "status": "completed",
                "audio_file": {"url": BASE + "/a"},
            },
        )
        request = GenerationRequest(upstream_model="minimax-music", prompt="##la##")
        assert adapter.submit(request).generation_id == "g:minimax-music"
        result = adapter.poll("g:minimax-music")
        calls: list[Any] = list(rsps.calls)
    assert result.state is PollState.SUCCEEDED and result.audio_url == BASE + "/a"
    assert [c.request.url.split("?")[0] for c in calls] == [url, url]
    assert json.loads(calls[0].request.body) == {"model": "minimax-music", "prompt": "##la##"}
    assert all(c.request.headers["Authorization"] == "Bearer lk" for c in calls)

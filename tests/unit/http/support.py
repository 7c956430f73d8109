"""Shared by the tests of app.http: loopback servers, their URLs and an account on them."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer

from app.providers.base import AccountConfig

TIMEOUT = (2.0, 5.0)
ALLOW_PRIVATE = pytest.mark.env(ALLOW_PRIVATE_URLS="true")


def started() -> HTTPServer:
    # Threaded, so werkzeug speaks HTTP/1.1 and keeps connections open between requests.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


def url(server: HTTPServer, path: str = "") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def account(base_url: str) -> AccountConfig:
    return AccountConfig(id="acct", provider="aimlapi", base_url=base_url, api_key="sk-test")

"""The one ``Retry-After`` reader (app.http.retry_after), for upstreams and webhook receivers alike."""

from __future__ import annotations

import datetime as dt

import pytest
from pytest_httpserver import HTTPServer

from app.db import Database
from app.http.retry_after import MAX_SECONDS, parse_retry_after
from app.providers.aimlapi import AimlapiAdapter
from app.providers.base import ProviderError
from app.webhooks.delivery import Dispatcher
from config import Settings
from tests.unit.http.support import ALLOW_PRIVATE, account, url

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Mon, 07 Dec 2026 12:02:00 GMT", 120.0),
        ("Mon, 07 Dec 2026 12:02:00 -0000", 120.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("99999999999", MAX_SECONDS),
        ("1e400", MAX_SECONDS),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_SECONDS),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("Mon, 32 Foo 2026 12:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@ALLOW_PRIVATE
@pytest.mark.parametrize(
    ("header", "expected"), [("120", 120.0), ("99999999999", MAX_SECONDS), ("soon", None)]
)
def test_upstreams_and_webhook_receivers_are_read_alike(
    settings: Settings, db: Database, upstream: HTTPServer, header: str, expected: float | None
) -> None:
    upstream.expect_request("/v2/generate/audio").respond_with_data(
        "slow down", status=429, headers={"Retry-After": header}
    )
    upstream.expect_request("/hook").respond_with_data(
        "slow down", status=429, headers={"Retry-After": header}
    )
    with pytest.raises(ProviderError) as info:
        AimlapiAdapter(account(url(upstream))).poll("gen-1")
    assert info.value.retry_after == expected
    assert Dispatcher(settings, db).send(url(upstream, "/hook"), {}, "{}").retry_after == expected

"""No door in: every address of research/reliability.md §8 D is refused at submit and at send."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import ssrfguard

from app.db import Database
from app.http import guard
from app.webhooks.delivery import Dispatcher
from config import Settings
from tests.conftest import GOOD_BODY, auth

# §8 D, as written there (the three "…" schemes given a body).
REFUSED = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::169.254.169.254]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fc00::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[64:ff9b::a00:1]/",
    "https://user:pass@example.com/",
    "https://example.com:6379/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "ftp://example.com/pub/file",
    "javascript:alert(1)",
    "http://[example.com]/",
    "https://example.com/" + "a" * 2100,
    "https://\u0435xample.com/hook",  # a Cyrillic "е": a homograph of example.com
]


def private_a_record(host: str, port: int, *_: Any) -> list[Any]:
    """A resolver that says every name lives at 10.1.2.3."""
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]


def no_such_name(host: str, *_: Any) -> list[Any]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize("url", REFUSED)
def test_the_guard_refuses_it(url: str, settings: Settings) -> None:
    with pytest.raises(guard.RefusedURL):
        guard.check(url, settings)


def test_a_name_whose_address_is_private_is_refused(settings: Settings) -> None:
    with pytest.raises(guard.RefusedURL, match="address"):
        guard.check("https://hooks.example.com/x", settings, resolver=private_a_record)


def test_a_name_that_does_not_resolve_is_refused(settings: Settings) -> None:
    # Fail closed: what cannot be checked is not accepted.
    with pytest.raises(guard.RefusedURL, match="does not resolve"):
        guard.check("https://hooks.example.com/x", settings, resolver=no_such_name)


def test_a_public_name_is_accepted(settings: Settings) -> None:
    def public(host: str, port: int, *_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    guard.check("https://hooks.example.com/x", settings, resolver=public)


@pytest.mark.parametrize("url", REFUSED)
def test_submit_answers_400_naming_callback_url(
    url: str, client: Any, api_key: str, catalog: Any
) -> None:
    response = client.post(
        "/v1/music/generations", json={**GOOD_BODY, "callback_url": url}, headers=auth(api_key)
    )
    assert response.status_code == 400, response.json
    assert response.json["error"]["param"] == "callback_url"


@pytest.mark.parametrize("url", [u for u in REFUSED if u.startswith("http")])
def test_the_endpoint_api_refuses_it(url: str, client: Any, api_key: str) -> None:
    response = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(api_key))
    assert response.status_code == 400, response.json
    assert response.json["error"]["param"] == "url"


@pytest.mark.parametrize("url", [u for u in REFUSED if u.startswith("http") and len(u) < 2048])
def test_sending_refuses_it_too(url: str, settings: Settings, db: Database) -> None:
    # The send path checks the address it connects to, whatever was accepted before.
    outcome = Dispatcher(settings, db).send(url, {}, "{}")
    assert outcome.status_code is None
    assert outcome.error


def test_rebinding_after_the_check_is_caught_at_send(settings: Settings, db: Database) -> None:
    answers = iter(["93.184.215.14", "127.0.0.1"])

    def flipping(host: str, port: int, *_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    guard.check(
        "http://rebind.example.com/hook", settings, resolver=flipping
    )  # first answer: public
    outcome = Dispatcher(settings, db, resolver=flipping).send(
        "http://rebind.example.com/hook", {}, "{}"
    )
    assert outcome.status_code is None
    assert outcome.error is not None and outcome.error.startswith("address refused")


@pytest.mark.env(ALLOW_PRIVATE_URLS="true")
def test_allowing_private_targets_still_refuses_metadata(settings: Settings) -> None:
    guard.check("http://127.0.0.1:8080/hook", settings)
    guard.check("http://10.0.0.5/hook", settings)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        with pytest.raises(guard.RefusedURL):
            guard.check(url, settings)


def test_the_default_policy_is_ssrfguards_full_table(settings: Settings) -> None:
    assert guard.policy(settings).allowed_networks == ()
    assert guard.policy(settings).denied_networks is ssrfguard.DEFAULT_DENIED

"""Every address of research/reliability.md §8 D, and the IPv6 spellings of the metadata
services, refused on every path by which Chorus fetches a URL that came from outside.

The paths: a job's ``callback_url`` and a webhook endpoint's ``url`` at the API, the webhook
send itself, ``reference_audio_url`` at the API and its fetch, an upstream's audio link, and a
redirect to the address from a server each path may reach. A name is judged by the address it
resolves to (a private answer refused, no answer refused) on each path that resolves. What proves nothing was reached is
the interpreter's own audit event for every socket connect: while a case runs, no connection
may go anywhere but the test's own redirecting server.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from app.db import Database
from app.http import guard
from app.jobs import reference_audio
from app.jobs.errors import BadReferenceAudio
from app.storage import AudioError
from app.web import create_app
from app.webhooks.delivery import Dispatcher
from config import Settings, load_settings
from tests.api.test_webhook_urls import REFUSED, no_such_name, private_a_record
from tests.conftest import GOOD_BODY, auth, funded_key, own_chorus
from tests.unit.http.support import started, url
from tests.unit.http.test_guard import fetch_error

# The metadata services in the spellings that reach them over IPv6, or that hide them in an
# IPv6 literal: AWS's own IPv6 endpoint, IPv4-mapped, -compatible, NAT64 and 6to4 forms of
# 169.254.169.254, and the other clouds' addresses outside 169.254/16.
METADATA = [
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fd00:ec2:0:0:0:0:0:254]/latest/api/token",
    "http://[FD00:EC2::254]/",
    "http://[fd00:ec2::254%25eth0]/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
    "http://[::a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[fe80::a9fe:a9fe]/",
    "http://169.254.170.2/v2/credentials",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/latest/",
    "http://0251.0376.0251.0376/",
    "http://0xa9fea9fe/",
    "http://2852039166/",
]
EVERY = REFUSED + METADATA
REFERENCE_MODEL = "minimax-music"  # a model that requires reference audio


@dataclass
class Context:
    settings: Settings
    private: Settings  # ALLOW_PRIVATE_URLS=true: the redirecting server on loopback is reachable
    db: Database
    client: Any
    key: str
    server: HTTPServer
    tmp: Path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Context]:
    tmp = tmp_path_factory.mktemp("fetch-paths")
    with own_chorus("fetch_paths", redis_url, tmp) as (env, db):
        settings = load_settings(env)
        app = create_app(settings)
        app.config["TESTING"] = True
        server = started()
        try:
            yield Context(
                settings,
                load_settings({**env, "ALLOW_PRIVATE_URLS": "true"}),
                db,
                app.test_client(),
                funded_key(db, "fetcher"),
                server,
                tmp,
            )
        finally:
            server.stop()


# ------------------------------------------------------------------ the connection monitor

_connects: list[Any] | None = None
_ignored: set[tuple[Any, Any]] = set()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connects is not None:
        address = args[1]
        if isinstance(address, tuple) and tuple(address[:2]) in _ignored:
            return
        _connects.append(address)


_installed: list[bool] = []


@pytest.fixture
def connects(redis_url: str) -> Iterator[list[Any]]:
    """The address of every socket connect made meanwhile, but Redis's (the API's rate limit
    counts there). The audit hook stays installed after, idle."""
    global _connects
    if not _installed:
        # An audit hook cannot be removed: installed once, by the first test that watches.
        sys.addaudithook(_audit)
        _installed.append(True)
    redis = urlsplit(redis_url)
    _ignored.add((redis.hostname, redis.port))
    _connects = []
    try:
        yield _connects
    finally:
        _connects = None


# ------------------------------------------------------------------ the paths


def via_callback_url(ctx: Context, target: str) -> str:
    answer = ctx.client.post(
        "/v1/music/generations",
        json={**GOOD_BODY, "callback_url": target},
        headers=auth(ctx.key),
    )
    assert answer.status_code == 400 and answer.json["error"]["param"] == "callback_url"
    return str(answer.json["error"]["message"])


def via_endpoint_url(ctx: Context, target: str) -> str:
    answer = ctx.client.put("/v1/webhooks/endpoint", json={"url": target}, headers=auth(ctx.key))
    assert answer.status_code == 400 and answer.json["error"]["param"] == "url"
    return str(answer.json["error"]["message"])


def via_webhook_send(ctx: Context, target: str) -> str:
    # Sending checks again the address it connects to, whatever was accepted before.
    outcome = Dispatcher(ctx.settings, ctx.db).send(target, {}, "{}")
    assert outcome.status_code is None and outcome.error, outcome
    # The guard's refusal, not a connection that happened to fail.
    assert outcome.error.startswith("address refused"), outcome.error
    return outcome.error


def via_reference_at_submit(ctx: Context, target: str) -> str:
    answer = ctx.client.post(
        "/v1/music/generations",
        json={**GOOD_BODY, "model": REFERENCE_MODEL, "reference_audio_url": target},
        headers=auth(ctx.key),
    )
    assert answer.status_code == 400, answer.json
    assert answer.json["error"]["param"] == "reference_audio_url"
    assert "could not be fetched" not in answer.json["error"]["message"], answer.json
    return str(answer.json["error"]["message"])


def via_reference_fetch(ctx: Context, target: str) -> str:
    with pytest.raises(BadReferenceAudio, match="not allowed") as info:
        reference_audio.check(target, ctx.settings)
    return info.value.message


def download(ctx: Context, link: str, settings: Settings, trusted: str | None) -> AudioError:
    error = fetch_error(settings, ctx.tmp, link, trusted)
    # Refused for good: a retry would be refused again.
    assert not error.retryable, error
    return str(error)


def via_audio_link(ctx: Context, target: str) -> str:
    return download(ctx, target, ctx.settings, "https://api.upstream.example")


# An upstream's signed audio links may be longer than any URL a client writes for Chorus to
# keep: the length rule is not theirs (app/http/downloads.py).
LONG = [u for u in REFUSED if len(u) > 2048]
NOT_FOR_AUDIO_LINKS = {"via_audio_link", "via_redirect_from_the_upstream"}


def redirect_to(ctx: Context, target: str) -> str:
    path = f"/r{len(ctx.server.log)}-{abs(hash(target))}"
    ctx.server.expect_request(path).respond_with_response(
        Response(status=302, headers={"Location": target})
    )
    return url(ctx.server, path)


def via_redirect_from_the_upstream(ctx: Context, target: str) -> str:
    # The upstream's own origin is trusted (the operator named it); where it sends us is not.
    return download(ctx, redirect_to(ctx, target), ctx.settings, url(ctx.server))


def via_redirect_from_a_callback(ctx: Context, target: str) -> str:
    outcome = Dispatcher(ctx.private, ctx.db).send(redirect_to(ctx, target), {}, "{}")
    assert outcome.status_code == 302 and outcome.error and "not followed" in outcome.error
    return outcome.error


def via_redirect_from_a_reference(ctx: Context, target: str) -> str:
    with pytest.raises(BadReferenceAudio, match="HTTP 302") as info:
        reference_audio.check(redirect_to(ctx, target), ctx.private)
    return info.value.message


PATHS: dict[str, Callable[[Context, str], str]] = {
    f.__name__: f
    for f in (
        via_callback_url,
        via_endpoint_url,
        via_webhook_send,
        via_reference_at_submit,
        via_reference_fetch,
        via_audio_link,
        via_redirect_from_the_upstream,
        via_redirect_from_a_callback,
        via_redirect_from_a_reference,
    )
}
# A redirect's Location: a URL some client would follow, that the redirecting server (werkzeug)
# sends as written (it rewrites a non-ASCII host to punycode, and cannot send a bracketed name);
# those two are refused as written on every path above.
REDIRECTABLE = [
    u
    for u in EVERY
    if u.startswith("http") and u not in LONG and u.isascii() and "[example.com]" not in u
]
DIRECT = [
    pytest.param(path, target, id=f"{path}-{target[:60]}")
    for path in PATHS
    if not path.startswith("via_redirect")
    for target in EVERY
    if not (path in NOT_FOR_AUDIO_LINKS and target in LONG)
]
REDIRECTED = [
    pytest.param(path, target, id=f"{path}-{target[:60]}")
    for path in PATHS
    if path.startswith("via_redirect")
    for target in REDIRECTABLE
]


@pytest.mark.parametrize(("path", "target"), DIRECT)
def test_refused_with_no_connection(
    ctx: Context, connects: list[Any], path: str, target: str
) -> None:
    reason = PATHS[path](ctx, target)
    assert reason
    assert connects == []


@pytest.mark.parametrize(("path", "target"), REDIRECTED)
def test_a_redirect_to_it_is_refused(
    ctx: Context, connects: list[Any], path: str, target: str
) -> None:
    PATHS[path](ctx, target)
    # Only the redirecting server was reached.
    assert {address[:2] for address in connects} <= {("127.0.0.1", ctx.server.port)}


@pytest.mark.parametrize("target", METADATA + [u for u in REFUSED if "169.254" in u])
@pytest.mark.parametrize(
    "path", ["via_webhook_send", "via_reference_fetch", "via_audio_link_private"]
)
def test_metadata_stays_refused_with_private_urls_allowed(
    ctx: Context, connects: list[Any], path: str, target: str
) -> None:
    if path == "via_webhook_send":
        outcome = Dispatcher(ctx.private, ctx.db).send(target, {}, "{}")
        assert outcome.status_code is None and outcome.error
    elif path == "via_reference_fetch":
        with pytest.raises(BadReferenceAudio):
            reference_audio.check(target, ctx.private)
    else:
        download(ctx, target, ctx.private, None)
    assert connects == []


def test_the_monitor_sees_a_connection(ctx: Context, connects: list[Any]) -> None:
    # What makes every empty list above mean something: an allowed send is seen.
    ctx.server.expect_request("/seen", method="POST").respond_with_data("ok")
    outcome = Dispatcher(ctx.private, ctx.db).send(url(ctx.server, "/seen"), {}, "{}")
    assert outcome.status_code == 200
    assert ("127.0.0.1", ctx.server.port) in {tuple(a[:2]) for a in connects}


# ------------------------------------------------------------------ names, by what they resolve to


def via_guard_check(ctx: Context, target: str, resolver: Any) -> None:
    # What the API runs on a callback or endpoint URL.
    with pytest.raises(guard.RefusedURL):
        guard.check(target, ctx.settings, resolver=resolver)


def via_send_resolved(ctx: Context, target: str, resolver: Any) -> None:
    outcome = Dispatcher(ctx.settings, ctx.db, resolver=resolver).send(target, {}, "{}")
    assert outcome.status_code is None and outcome.error, outcome


def via_reference_resolved(ctx: Context, target: str, resolver: Any) -> None:
    with pytest.raises(BadReferenceAudio):
        reference_audio.check(target, ctx.settings, session=guard.session(ctx.settings, resolver))


def via_audio_link_resolved(ctx: Context, target: str, resolver: Any) -> None:
    error = fetch_error(ctx.settings, ctx.tmp, target, "https://api.upstream.example", resolver)
    # A private answer is refused for good; a name that does not resolve may resolve later.
    assert resolver is no_such_name or not error.retryable, error


RESOLVED_PATHS = [
    via_guard_check,
    via_send_resolved,
    via_reference_resolved,
    via_audio_link_resolved,
]


@pytest.mark.parametrize("resolver", [private_a_record, no_such_name], ids=["private", "nxdomain"])
@pytest.mark.parametrize("path", RESOLVED_PATHS, ids=[p.__name__ for p in RESOLVED_PATHS])
def test_a_name_is_judged_by_its_address_and_fails_closed(
    ctx: Context, connects: list[Any], path: Any, resolver: Any
) -> None:
    path(ctx, "https://files.example.com/song.wav", resolver)
    assert connects == []

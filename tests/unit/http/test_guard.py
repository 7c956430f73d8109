"""The one SSRF guard (app.http.guard) for every URL that came from outside, over real sockets.

Webhook callbacks and endpoints, reference audio and the upstreams' audio links are all checked
by it. The servers are pytest-httpserver on loopback; ``inside`` stands for a service inside
Chorus's network, and its empty log is the proof that nothing reached it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ssrfguard
from pytest_httpserver import HTTPServer
from werkzeug import Response

from app.db import Database
from app.http import guard
from app.http.downloads import MAX_HOPS, Downloads
from app.jobs import reference_audio
from app.jobs.errors import BadReferenceAudio
from app.sim.audio import wav_bytes
from app.storage import AudioError, LocalStorage
from app.webhooks.delivery import Dispatcher
from config import Settings
from tests.conftest import auth
from tests.unit.http.support import ALLOW_PRIVATE, TIMEOUT, started, url

METADATA_V4 = "http://169.254.169.254/latest/meta-data/"
METADATA_V6 = "http://[fd00:ec2::254]/latest/meta-data/"
WAV = wav_bytes(8000, 8000)


@pytest.fixture
def inside() -> Iterator[HTTPServer]:
    """A service on Chorus's own network that no outside URL may reach."""
    server = started()
    server.expect_request("/secret").respond_with_data("the keys")
    yield server
    server.stop()


def redirect(server: HTTPServer, path: str, location: str) -> None:
    server.expect_request(path).respond_with_response(
        Response(status=302, headers={"Location": location})
    )


def fetch(
    settings: Settings,
    tmp_path: Path,
    link: str,
    trusted: str | None = None,
    resolver: ssrfguard.Resolver | None = None,
) -> tuple[str, Any]:
    storage = LocalStorage(tmp_path / "audio")
    return storage.fetch(
        link,
        "job",
        max_bytes=1 << 20,
        timeout=TIMEOUT,
        downloads=Downloads(settings, resolver),
        trusted=trusted,
    )


def fetch_error(
    settings: Settings,
    tmp_path: Path,
    link: str,
    trusted: str | None,
    resolver: ssrfguard.Resolver | None = None,
) -> AudioError:
    with pytest.raises(AudioError) as info:
        fetch(settings, tmp_path, link, trusted, resolver)
    return info.value


# ------------------------------------------------------------------ upstream audio links


def test_a_link_on_the_upstreams_own_origin_is_fetched_through_its_redirects(
    settings: Settings, tmp_path: Path, upstream: HTTPServer
) -> None:
    # The operator's catalog names this origin, loopback or not (the simulator's case).
    redirect(upstream, "/files/a", "/files/b")
    redirect(upstream, "/files/b", url(upstream, "/song.wav"))
    upstream.expect_request("/song.wav").respond_with_data(WAV, content_type="audio/wav")
    key, info = fetch(settings, tmp_path, url(upstream, "/files/a"), trusted=url(upstream, "/v2"))
    assert key == "job.wav" and info.size == len(WAV)


def test_a_link_elsewhere_to_a_private_address_is_refused(
    settings: Settings, tmp_path: Path, inside: HTTPServer
) -> None:
    error = fetch_error(settings, tmp_path, url(inside, "/secret"), "https://api.example.com")
    assert not error.retryable and "refused" in str(error)
    assert inside.log == []


@pytest.mark.parametrize("target", ["inside", "http://10.0.0.5/x", METADATA_V4, METADATA_V6])
def test_a_redirect_from_the_upstream_to_a_private_address_is_refused(
    settings: Settings, tmp_path: Path, upstream: HTTPServer, inside: HTTPServer, target: str
) -> None:
    redirect(upstream, "/song.wav", url(inside, "/secret") if target == "inside" else target)
    error = fetch_error(settings, tmp_path, url(upstream, "/song.wav"), url(upstream))
    assert not error.retryable and "refused" in str(error)
    assert inside.log == []


@ALLOW_PRIVATE
@pytest.mark.parametrize("target", [METADATA_V4, METADATA_V6])
def test_with_private_urls_allowed_a_redirect_to_metadata_is_still_refused(
    settings: Settings, tmp_path: Path, upstream: HTTPServer, target: str
) -> None:
    redirect(upstream, "/song.wav", target)
    error = fetch_error(settings, tmp_path, url(upstream, "/song.wav"), None)
    assert not error.retryable and "refused" in str(error)
    assert len(upstream.log) == 1


def test_a_redirect_loop_ends(settings: Settings, tmp_path: Path, upstream: HTTPServer) -> None:
    redirect(upstream, "/loop", "/loop")
    error = fetch_error(settings, tmp_path, url(upstream, "/loop"), url(upstream))
    assert error.retryable and "redirects" in str(error)
    assert len(upstream.log) == MAX_HOPS + 1


# ------------------------------------------------------------------ callbacks, endpoints, reference audio


@ALLOW_PRIVATE
def test_the_ipv6_metadata_address_is_refused_everywhere_even_with_private_urls_allowed(
    settings: Settings, db: Database, tmp_path: Path, client: Any, api_key: str
) -> None:
    # Inside fc00::/7, which ALLOW_PRIVATE_URLS opens; cut out of it for every kind of URL.
    with pytest.raises(guard.RefusedURL):
        guard.check(METADATA_V6, settings)
    endpoint = client.put("/v1/webhooks/endpoint", json={"url": METADATA_V6}, headers=auth(api_key))
    assert endpoint.status_code == 400 and endpoint.json["error"]["param"] == "url"
    outcome = Dispatcher(settings, db).send(METADATA_V6, {}, "{}")
    assert outcome.status_code is None and (outcome.error or "").startswith("address refused")
    with pytest.raises(BadReferenceAudio, match="not allowed"):
        reference_audio.check(METADATA_V6, settings)
    error = fetch_error(settings, tmp_path, METADATA_V6, None)
    assert not error.retryable and "refused" in str(error)


@ALLOW_PRIVATE
def test_a_callback_that_redirects_is_not_followed(
    settings: Settings, db: Database, upstream: HTTPServer, inside: HTTPServer
) -> None:
    redirect(upstream, "/hook", url(inside, "/secret"))
    outcome = Dispatcher(settings, db).send(url(upstream, "/hook"), {}, "{}")
    assert outcome.status_code == 302 and "not followed" in (outcome.error or "")
    assert inside.log == []


@ALLOW_PRIVATE
def test_a_reference_track_behind_a_redirect_is_refused_unfollowed(
    settings: Settings, upstream: HTTPServer, inside: HTTPServer
) -> None:
    redirect(upstream, "/ref.wav", url(inside, "/secret"))
    with pytest.raises(BadReferenceAudio, match="HTTP 302"):
        reference_audio.check(url(upstream, "/ref.wav"), settings)
    assert inside.log == []


def test_a_reference_track_on_a_private_address_is_refused(
    settings: Settings, inside: HTTPServer
) -> None:
    with pytest.raises(BadReferenceAudio, match="not allowed"):
        reference_audio.check(url(inside, "/secret"), settings)
    assert inside.log == []

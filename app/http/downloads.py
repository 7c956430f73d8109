"""Fetching an upstream's audio link: a URL the upstream wrote, so not trusted by itself.

A link on the origin of the account's own API (the simulator's, or an upstream serving its
files itself) is as trusted as that API, which the operator's catalog names. Any other link
(a CDN, a bucket, or anything a compromised upstream might hand back) goes through the SSRF
guard. Redirects are followed here, hop by hop, and each hop is decided again the same way, so
a trusted link cannot bounce the download into Chorus's own network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import ssrfguard

from app.http import guard
from app.http.sessions import POOL_SIZE
from config import Settings

MAX_HOPS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}


class Downloads:
    """Pooled GETs of audio links, shared by a process's threads."""

    def __init__(self, settings: Settings, resolver: ssrfguard.Resolver | None = None) -> None:
        self.settings = settings
        self.trusted = requests.Session()
        pooled = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE)
        self.trusted.mount("http://", pooled)
        self.trusted.mount("https://", pooled)
        self.guarded = guard.session(settings, resolver, pool_maxsize=POOL_SIZE)

    @contextmanager
    def get(
        self, url: str, *, timeout: tuple[float, float], trusted: str | None = None
    ) -> Iterator[requests.Response]:
        """The streamed answer at the end of ``url``'s redirects.

        ``trusted`` is the base URL of the account that handed the link out. Raises
        ``guard.RefusedURL`` for a hop the policy refuses, ``requests.TooManyRedirects`` past
        ``MAX_HOPS``, and requests' own errors otherwise.
        """
        for _ in range(MAX_HOPS + 1):
            session = self.trusted if trusted and same_origin(url, trusted) else self.guarded
            try:
                if session is self.guarded:
                    # No length cap: an upstream's signed links can be longer than any URL a
                    # client would write for Chorus to store and show back.
                    guard.check_written(url, self.settings, max_length=None)
                response = session.get(url, stream=True, timeout=timeout, allow_redirects=False)
            except (ssrfguard.SSRFGuardError, guard.RefusedURL) as exc:
                raise guard.RefusedURL(f"the audio link {url[:200]!r} is refused: {exc}") from exc
            if not response.is_redirect:
                with response:
                    yield response
                return
            url = urljoin(response.url, response.headers["Location"])
            response.close()
        raise requests.TooManyRedirects(f"more than {MAX_HOPS} redirects")

    def close(self) -> None:
        self.trusted.close()
        self.guarded.close()


def same_origin(url: str, other: str) -> bool:
    try:
        a, b = urlsplit(url), urlsplit(other)
        return (a.scheme, a.hostname, a.port or DEFAULT_PORTS.get(a.scheme)) == (
            b.scheme,
            b.hostname,
            b.port or DEFAULT_PORTS.get(b.scheme),
        )
    except ValueError:  # a port that is not a number, a bracketed host that is no address
        return False

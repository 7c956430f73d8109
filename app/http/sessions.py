"""Pooled sessions for the upstream APIs, and the one shape of an upstream's answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

import requests
import requests.adapters

USER_AGENT = "Chorus/0.1 (+music-generation gateway)"
# Many worker threads share one adapter per account; without a larger pool they would open and
# discard a connection per call.
POOL_SIZE = 128
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def pooled_session(base_url: str) -> requests.Session:
    """A session that keeps its connections, shared by the worker's threads.

    requests otherwise looks at the environment (proxy variables, the CA bundle, ~/.netrc) on
    every call, a third of the client's CPU per status call. It is asked once here, for the
    address the session will call, and the answer is kept; ~/.netrc is left out (the adapter
    sends its own credentials).
    """
    session = requests.Session()
    pooled = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", pooled)
    session.mount("https://", pooled)
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(found.get("proxies") or {})
    session.verify = found.get("verify", True)
    session.trust_env = False
    session.headers["User-Agent"] = USER_AGENT
    return session


@dataclass(frozen=True)
class Answer:
    """An upstream's complete answer to one call, whichever client carried it."""

    method: str
    url: str
    status_code: int
    # Case-insensitive, as both clients hand them over.
    headers: Mapping[str, str]
    content: bytes

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        return cls(
            method=response.request.method or "GET",
            url=response.url,
            status_code=response.status_code,
            headers=response.headers,
            content=response.content,
        )

    @property
    def text(self) -> str:
        return self.content.decode(self.charset, errors="replace")

    @property
    def charset(self) -> str:
        message = Message()
        message["Content-Type"] = self.headers.get("Content-Type", "")
        charset = message.get_content_charset() or "utf-8"
        try:
            "".encode(charset)
        except LookupError:
            return "utf-8"
        return charset

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)

    @property
    def is_redirect(self) -> bool:
        return self.status_code in REDIRECTS and "Location" in self.headers

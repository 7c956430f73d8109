"""Pooled sessions for the upstream APIs, and the one shape of an upstream's answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

USER_AGENT = "Chorus/0.1 (+music-generation gateway)"
# Many worker threads share one adapter per account; without a larger pool they would open and
# discard a connection per call.
POOL_SIZE = 128
REDIRECTS = frozenset({301, 302, 303, 307, 308})


_sending = threading.local()


@contextmanager
def before_sending(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` on this thread once, when the next request made by a pooled session
    has its connection open (DNS, TCP and TLS done) and is about to send its first byte.

    What fails before that point (no address, refused, a connect timeout, a TLS handshake)
    therefore never ran it: nothing reached the server. Whatever ``callback`` raises stops the
    request before it is sent, and comes out of the call as it was raised.
    """
    _sending.callback = callback
    try:
        yield
    finally:
        _sending.callback = None


class _SendsAfterCallback:
    """Connects first, then runs the thread's ``before_sending`` callback, then sends."""

    if TYPE_CHECKING:  # what the connection class it is mixed into provides
        is_closed: bool

        def connect(self) -> None: ...

    def request(self, *args: Any, **kwargs: Any) -> None:
        callback = getattr(_sending, "callback", None)
        if callback is not None:
            if self.is_closed:
                self.connect()
            _sending.callback = None
            callback()
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Connection(_SendsAfterCallback, HTTPConnection):
    pass


class _TLSConnection(_SendsAfterCallback, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


def _hook(manager: PoolManager) -> PoolManager:
    manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return manager


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections honour ``before_sending``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _hook(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **kwargs)
        # A SOCKS manager has connection classes of its own: left as they are (see
        # ``reports_sending``).
        return manager if proxy.lower().startswith("socks") else _hook(manager)


def reports_sending(session: requests.Session, url: str) -> bool:
    """Whether calls to ``url`` on ``session`` run the ``before_sending`` callback."""
    proxy = requests.utils.select_proxy(url, session.proxies) or ""
    return isinstance(session.get_adapter(url), _Adapter) and not proxy.lower().startswith("socks")


def pooled_session(base_url: str) -> requests.Session:
    """A session that keeps its connections, shared by the worker's threads.

    requests otherwise looks at the environment (proxy variables, the CA bundle, ~/.netrc) on
    every call, a third of the client's CPU per status call. It is asked once here, for the
    address the session will call, and the answer is kept; ~/.netrc is left out (the adapter
    sends its own credentials).
    """
    session = requests.Session()
    pooled = _Adapter(pool_connections=4, pool_maxsize=POOL_SIZE)
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

"""Many status calls to one upstream at once.

Each call of a batch runs on a thread of the fan-out's own pool, over urllib3's keep-alive
connection pool: the upstream works on all of them at once, and the calling thread waits for
the batch. urllib3 directly, not requests, because requests' own work per call (hooks, cookies,
environment, redirects) is most of the client's CPU for an answer of a few hundred bytes.

Only for idempotent GETs: a call that meets a kept-alive connection the upstream had closed
meanwhile is sent again on another; a fault on a fresh connection is the answer. Every call has
the account's connect timeout, and the whole batch shares one read deadline (the account's read
timeout), so a silent upstream costs the batch that long, not that long per call.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests.utils
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from app.http.sessions import Answer

# An answer to a status call is a few hundred bytes; anything past this is not one.
MAX_BODY_BYTES = 1 << 20
# Faults that mean "this kept-alive connection was closed by the other side meanwhile".
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# Tries of one call while each fault met a kept-alive connection closed meanwhile.
TRIES = 3

_sent = threading.local()


@dataclass(frozen=True)
class Get:
    """One GET: a path under the base URL, and its query."""

    path: str
    params: Mapping[str, str] | None = None


class TransportError(Exception):
    """No answer: ``kind`` is "connect" (nothing reached the upstream), "timeout" or "broken"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Connection(HTTPConnection):
    """Notes, for the calling thread, whether its request went out on a kept-alive socket."""

    requests_on_socket = 0

    def connect(self) -> None:
        super().connect()
        self.requests_on_socket = 0

    def request(self, *args: Any, **kwargs: Any) -> None:
        _sent.reused = not self.is_closed and self.requests_on_socket > 0
        super().request(*args, **kwargs)
        self.requests_on_socket += 1


class _TLSConnection(_Connection, HTTPSConnection):
    pass


class FanOut:
    """Keep-alive connections to one upstream, and ``get_many`` over them."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float,
        verify: bool | str = True,
        max_idle: int = 128,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.headers = dict(headers)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.verify = verify
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._made: tuple[int, HTTPConnectionPool, ThreadPoolExecutor] | None = None

    def get_many(self, calls: Sequence[Get]) -> list[Answer | TransportError]:
        """Every GET at once; one result per call, in order."""
        pool, threads = self._pool()
        deadline = time.monotonic() + self.read_timeout
        if len(calls) == 1:
            return [self._get(pool, calls[0], deadline)]
        return list(threads.map(lambda call: self._get(pool, call, deadline), calls))

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, None
        if made is not None and made[0] == os.getpid():
            made[2].shutdown(wait=False)
            made[1].close()

    # ------------------------------------------------------------------ internals

    def _pool(self) -> tuple[HTTPConnectionPool, ThreadPoolExecutor]:
        # Connections and threads belong to the process that made them: a forked child
        # starts afresh.
        made = self._made
        if made is None or made[0] != os.getpid():
            with self._lock:
                made = self._made
                if made is None or made[0] != os.getpid():
                    made = self._made = (os.getpid(), self._new_pool(), self._new_threads())
        return made[1], made[2]

    def _new_pool(self) -> HTTPConnectionPool:
        options: dict[str, Any] = {
            "maxsize": self.max_idle,
            "block": False,
            "headers": self.headers,
            # Built once: urllib3 would otherwise make a Retry object per call from ``False``.
            "retries": Retry(total=False, redirect=False, raise_on_redirect=False),
            "timeout": Timeout(connect=self.connect_timeout, read=self.read_timeout),
        }
        pool: HTTPConnectionPool
        if self.scheme == "https":
            pool = HTTPSConnectionPool(self.host, self.port, **options, **_tls(self.verify))
            pool.ConnectionCls = _TLSConnection
        else:
            pool = HTTPConnectionPool(self.host, self.port, **options)
            pool.ConnectionCls = _Connection
        return pool

    def _new_threads(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.max_idle, thread_name_prefix="fanout")

    def _target(self, call: Get) -> str:
        target = self.prefix + call.path
        if call.params:
            target += "?" + urlencode(call.params)
        return target

    def _get(self, pool: HTTPConnectionPool, call: Get, deadline: float) -> Answer | TransportError:
        target = self._target(call)
        tries = 1
        while True:
            try:
                return self._call(pool, target, deadline)
            except TransportError as exc:
                return exc
            except ProtocolError as exc:
                if tries >= TRIES or not (getattr(_sent, "reused", False) and _stale(exc)):
                    return TransportError("broken", f"connection failed: {exc}")
            tries += 1

    def _call(self, pool: HTTPConnectionPool, target: str, deadline: float) -> Answer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError("timeout", f"no answer within {self.read_timeout:g}s")
        _sent.reused = False
        try:
            response = pool.urlopen(
                "GET",
                target,
                timeout=Timeout(connect=self.connect_timeout, read=left),
                redirect=False,
                preload_content=False,
            )
            try:
                body = response.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    response.close()
                    raise TransportError("broken", f"an answer larger than {MAX_BODY_BYTES} bytes")
            finally:
                response.release_conn()
        except NewConnectionError as exc:
            raise TransportError("connect", f"connection failed: {exc}") from exc
        except ConnectTimeoutError as exc:
            raise TransportError("connect", f"connect timeout: {exc}") from exc
        except ReadTimeoutError as exc:
            raise TransportError("timeout", f"no answer within {self.read_timeout:g}s") from exc
        except ProtocolError:
            raise
        except (HTTPError, OSError) as exc:
            raise TransportError("broken", f"connection failed: {exc}") from exc
        return Answer("GET", self.origin + target, response.status, response.headers, body)


def _stale(exc: ProtocolError) -> bool:
    return any(isinstance(arg, STALE) for arg in exc.args)


def _tls(verify: bool | str) -> dict[str, Any]:
    """The certificate checks requests would make with the same ``verify``."""
    if verify is False:
        return {"cert_reqs": "CERT_NONE", "assert_hostname": False}
    bundle = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(bundle):
        return {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir": bundle}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": bundle}

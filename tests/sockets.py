"""Loopback servers that misbehave at a chosen moment of a connection, and a TCP relay that
can be cut and restored: for the tests of what reached an upstream (or the database) and
what did not.

* ``refusing_server``: nothing listens; every connect is refused.
* ``silent_server``: the kernel accepts connections; nobody ever reads or answers.
* ``hang_up_server``: reads one whole request, then closes without an answer.
* ``full_server``: its accept queue is full, so a connect never completes (a connect timeout).
* ``closing_server``: closes every connection at once, before a TLS handshake can happen.
* ``Relay``: forwards TCP to a target, from the start or once its gate opens; ``cut()`` closes every connection and refuses new ones
  (a restart of the server behind it), ``restore()`` listens again on the same port, and
  ``pause()`` holds every byte where it is (a server that stopped answering). Hooks run when a
  client connects and when its first bytes arrive, before they are forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


def address(url: str) -> tuple[str, int]:
    """The (host, port) a URL names."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_until_closed(
    sock: socket.socket, *, each_round: Callable[[], None] | None = None
) -> bytes:
    """All a non-blocking socket receives until its peer closes, read from a coroutine so the
    server under test goes on running on the same loop. ``each_round`` runs before each read."""
    received = b""
    while True:
        if each_round is not None:
            each_round()
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        if not chunk:
            return received
        received += chunk


def _listener(port: int = 0, backlog: int = 64) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    return sock


def _url(sock: socket.socket, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"


def _stop(sock: socket.socket, thread: threading.Thread | None) -> None:
    """Close a listening socket and end its accept loop (a shutdown wakes a blocked accept)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    if thread is not None:
        thread.join(timeout=5)


def _serve(sock: socket.socket, handle: Callable[[socket.socket], None]) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@contextmanager
def refusing_server() -> Iterator[str]:
    """A port nothing listens on: every connect is refused."""
    yield f"http://127.0.0.1:{free_port()}"


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog does) and never answers."""
    with _listener(backlog=8) as sock:
        yield _url(sock)


def read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request (head and a Content-Length body) from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return data


@contextmanager
def hang_up_server() -> Iterator[str]:
    """Reads one whole request per connection, then closes it without an answer."""

    def handle(conn: socket.socket) -> None:
        with conn:
            read_request(conn)

    sock = _listener()
    thread = _serve(sock, handle)
    try:
        yield _url(sock)
    finally:
        _stop(sock, thread)


def _fill(sock: socket.socket) -> list[socket.socket]:
    """Fill a listening socket's accept queue with connections nobody accepts."""
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(sock.getsockname())
        fillers.append(filler)
    return fillers


@contextmanager
def full_server() -> Iterator[str]:
    """A listening socket whose accept queue is full: a further connect is never completed
    (the kernel drops its SYN), so the client's connect times out."""
    sock = _listener(backlog=0)
    fillers = _fill(sock)
    try:
        yield _url(sock)
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


@contextmanager
def closing_server() -> Iterator[str]:
    """Closes every connection as soon as it is accepted: an https:// client's TLS handshake
    fails before any of its request could be sent. Yields the https:// URL."""
    sock = _listener()
    thread = _serve(sock, lambda conn: conn.close())
    try:
        yield _url(sock, "https")
    finally:
        _stop(sock, thread)


class Relay:
    """A TCP relay from a port of its own to ``target`` (host, port), in threads.

    ``on_connect()`` runs when a client's connection is accepted, ``on_request(data)`` with a
    connection's first bytes, before they are forwarded; either may return False to swallow
    the connection (nothing is forwarded, it is closed).
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        on_connect: Callable[[], bool] | None = None,
        on_request: Callable[[bytes], bool] | None = None,
        gated: bool = False,
    ) -> None:
        """``gated``: until ``open_gate()``, connects to the relay are never completed (its
        accept queue is kept full, so the kernel drops their SYNs; they are retried)."""
        self.target = target
        self.on_connect = on_connect
        self.on_request = on_request
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._flowing = threading.Event()
        self._fillers: list[socket.socket] = []
        if gated:
            self._sock = _listener(self.port, backlog=0)
            self._fillers = _fill(self._sock)
            self._flowing.set()
        else:
            self.restore()

    def open_gate(self) -> None:
        """Accept connections from now on (the ones kept waiting get in on their next SYN)."""
        for filler in self._fillers:
            filler.close()
        self._fillers = []
        if self._sock is not None and self._thread is None:
            self._thread = _serve(self._sock, self._handle)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def restore(self) -> None:
        """Listen (again) on the relay's port, and let bytes flow."""
        self._sock = _listener(self.port)
        self._thread = _serve(self._sock, self._handle)
        self._flowing.set()

    def pause(self) -> None:
        """Forward nothing more until ``cut`` and ``restore``: what is in flight stays held
        (a held request is then dropped with its connection, never delivered late)."""
        self._flowing.clear()

    def cut(self) -> None:
        """Refuse new connections and close every open one, as a restarting server does."""
        for filler in self._fillers:
            filler.close()
        if self._sock is not None:
            _stop(self._sock, self._thread)
            self._sock, self._thread = None, None
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        # Held bytes are released to find their connections gone.
        self._flowing.set()

    def close(self) -> None:
        self.cut()

    def _track(self, *conns: socket.socket) -> None:
        with self._lock:
            self._conns.update(conns)

    def _handle(self, client: socket.socket) -> None:
        self._track(client)
        if self.on_connect is not None and self.on_connect() is False:
            client.close()
            return
        try:
            first = client.recv(65536)
        except OSError:
            client.close()
            return
        if not first or (self.on_request is not None and self.on_request(first) is False):
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        try:
            self._forward(first, upstream)
        except OSError:
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _forward(self, chunk: bytes, sink: socket.socket) -> None:
        self._flowing.wait()
        with self._lock:
            live = sink in self._conns
        if not live:
            raise OSError("cut")
        sink.sendall(chunk)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self._forward(chunk, sink)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

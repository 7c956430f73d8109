"""How the web process serves the Flask app so that slow clients hold no thread.

gunicorn keeps the process model (WEB_CONCURRENCY processes, graceful restarts), but each
process runs uvicorn's event loop (``Worker``) instead of gthread's threads. The loop reads a
request's headers (``HeaderDeadline``: within REQUEST_HEADER_TIMEOUT, or the connection is
closed) and then its whole body (``WholeRequests``: within REQUEST_BODY_TIMEOUT, or 408; at
most MAX_CONTENT_LENGTH, or 413), and only then hands it to one of WEB_THREADS threads that
run Flask (a2wsgi). A client that trickles bytes costs a socket, never a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_address, ip_network
from typing import Any, cast

from a2wsgi import WSGIMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from config import Settings, load_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Set in the scope (environ["asgi.scope"] for Flask) when the body did not arrive in time: the
# app answers 408 in the request's own error shape.
LATE_BODY = "chorus.late_body"
# Set when the client ended its side of the connection in the middle of the body: the app
# answers 400 in the request's own error shape (the bytes that came are not the body).
BODY_CUT_SHORT = "chorus.body_cut_short"
# Set by a response that never ends by itself (``app.follow``: a live event stream, an
# early-audio listener): called when the server shuts down, so that it ends the response and
# the process can stop.
END_STREAM = "chorus.end_stream"


class LingeringClose:
    """A connection's transport whose ``close`` first lets the client read the answer.

    Closing a socket with request bytes still unread makes the kernel send RST, and a client
    that gets RST loses the answer it has not read yet (the 413 to an upload still being
    sent, the 400 to a request that cannot be parsed). So, as nginx's lingering_close does:
    send FIN once the answer is out, read and discard what the client still sends for at most
    ``seconds`` (or until its own FIN), then close. Everything else is the transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: Any, seconds: float) -> None:
        self._transport = transport
        self._loop = loop
        self.seconds = seconds
        self.lingering = False
        self.peer_done = False  # the client sent FIN: nothing more can come
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        # Closed for writing once lingering: what an answer still sends then (one the app
        # finished after the connection was given up) is dropped, as a closed transport drops it.
        if not self.lingering:
            self._transport.write(data)

    def is_closing(self) -> bool:
        # While lingering the connection is closing for every user of it (keep-alive, the
        # next pipelined request, 100-continue): only the discarding goes on.
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if self.peer_done or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # after what is buffered: the answer goes first
        self._transport.resume_reading()  # flow control may have paused it; it must drain
        self._timer = self._loop.call_later(self.seconds, self._transport.close)

    def forget(self) -> None:
        """The connection is gone: no timer may outlive it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with a deadline on each request's headers, an answer to a
    client that half-closes its side, and lingering closes (``LingeringClose``).

    uvicorn closes a connection idle between requests (keep-alive timeout) but waits for ever
    on one that sends headers a byte now and then; that costs no thread here, but a file
    descriptor and a little memory each. The clock starts at the connection and again at the
    first byte of each following request.
    """

    header_seconds = 10.0
    linger_seconds = 2.0
    _header_timer: asyncio.TimerHandle | None = None
    transport: Any  # a LingeringClose around the connection's own

    def connection_made(self, transport: Any) -> None:
        # Every holder of the transport (the protocol, each request cycle, flow control) then
        # closes by lingering.
        lingering = LingeringClose(transport, self.loop, self.linger_seconds)
        super().connection_made(cast(asyncio.Transport, lingering))
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # read only so that the kernel has no unread bytes to reset the answer with
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client has said all it will say (FIN; it may still read). uvicorn would close at
        once and drop the request in progress; here it gets its answer first."""
        self.transport.peer_done = True
        cycle = self.cycle
        if self.transport.lingering or cycle is None or cycle.response_complete:
            return None  # nothing to answer: asyncio closes the connection
        if cycle.more_body:
            # What came is handed on as the whole body, flagged: the app answers 400.
            cycle.scope[BODY_CUT_SHORT] = True  # type: ignore[literal-required]
            cycle.more_body = False
        cycle.keep_alive = False  # nothing can follow this request: close after its answer
        cycle.message_event.set()
        return True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()

    def shutdown(self) -> None:
        """A graceful stop: a live stream is ended (its client resumes elsewhere) rather than
        holding the process until gunicorn's graceful timeout kills it."""
        cycle = self.cycle
        scope: Any = cycle.scope if cycle is not None else {}
        end: Callable[[], None] | None = scope.get(END_STREAM)
        super().shutdown()
        if end is not None and cycle is not None and not cycle.response_complete:
            end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        self.transport.forget()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._header_timer = self.loop.call_later(self.header_seconds, self.transport.close)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class Worker(UvicornWorker):
    """gunicorn's worker class for Chorus (``-k app.webserver.Worker``)."""

    # X-Forwarded-For is trusted from nowhere: the rate limit counts the connection's own
    # address, as under gunicorn's threads before (put a proxy's address rule in front of it
    # knowingly, not by default).
    # Access lines are gunicorn's (AccessLog), in its format and through its logger class.
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "proxy_headers": False, "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's own lines (startup, bad requests) take gunicorn's error log's handlers; a
        # logger class that sends gunicorn's lines on to the root's has them sent on too.
        logging.getLogger("uvicorn.error").propagate = self.log.error_log.propagate
        deadline = load_settings().request_header_timeout
        self.config.http = type("HeaderDeadline", (HeaderDeadline,), {"header_seconds": deadline})

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = ForwardedProto(self.wsgi, self.cfg.forwarded_allow_ips)
        self.wsgi: ASGIApp = AccessLog(app, self.log) if self.log.access_log_enabled else app


@dataclass
class _Sent:
    """What gunicorn's access log reads of a response (``Logger.atoms``)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0


@dataclass
class _Asked:
    headers: list[tuple[str, str]]


class AccessLog:
    """One access line per request through gunicorn's logger (``--access-logfile``,
    ``--access-logformat``, ``--logger-class``), as its own workers write them."""

    def __init__(self, app: ASGIApp, log: Any) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        response = _Sent()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.headers = [
                    (k.decode("latin1"), v.decode("latin1")) for k, v in message["headers"]
                ]
            elif message["type"] == "http.response.body":
                response.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            headers = [(k.decode("latin1"), v.decode("latin1")) for k, v in scope["headers"]]
            self.log.access(
                response,
                _Asked(headers),
                _environ(scope, headers),
                timedelta(seconds=time.monotonic() - began),
            )


def _environ(scope: Scope, headers: list[tuple[str, str]]) -> dict[str, Any]:
    query = scope["query_string"].decode("latin1")
    path = scope.get("raw_path") or scope["path"].encode()
    environ = {
        "REQUEST_METHOD": scope["method"],
        "RAW_URI": path.decode("latin1") + (f"?{query}" if query else ""),
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": (scope.get("client") or ("-",))[0],
    }
    environ.update(("HTTP_" + k.upper().replace("-", "_"), v) for k, v in headers)
    return environ


class ForwardedProto:
    """``X-Forwarded-Proto`` from the addresses gunicorn trusts (FORWARDED_ALLOW_IPS, by
    default loopback), as gunicorn itself applies it: links then say https behind a local
    TLS proxy. Only the scheme; the client's address is left alone."""

    def __init__(self, app: ASGIApp, trusted: list[str] | str) -> None:
        self.app = app
        names = trusted.split(",") if isinstance(trusted, str) else trusted
        names = [n.strip() for n in names if n.strip()]
        self.anyone = "*" in names
        self.networks = [_network(n) for n in names if n != "*" and _network(n)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._trusted(scope.get("client")):
            for name, value in scope["headers"]:
                if name == b"x-forwarded-proto" and value in (b"http", b"https"):
                    scope["scheme"] = value.decode()
        await self.app(scope, receive, send)

    def _trusted(self, client: tuple[str, int] | None) -> bool:
        if self.anyone:
            return True
        try:
            address = ip_address(client[0]) if client else None
        except ValueError:
            return False
        return address is not None and any(address in n for n in self.networks)


def _network(name: str) -> Any:
    """The addresses ``name`` covers; None for what is no address (gunicorn also takes
    hostnames and socket paths here, which a TCP peer's address never matches)."""
    try:
        return ip_network(name, strict=False)
    except ValueError:
        return None


class WholeRequests:
    """An ASGI app running a WSGI app on a pool of threads, each request's body read whole in
    the event loop first.

    a2wsgi alone reads the body from the WSGI thread, so a slow upload would hold it. Here a
    body that takes longer than ``body_seconds`` is flagged (``LATE_BODY``; the app answers
    408), and reading stops one byte past ``max_body`` (the app answers 413 as it does for
    any body over MAX_CONTENT_LENGTH). A chunked body reaches the app with the length it had.
    """

    def __init__(self, app: Any, *, threads: int, max_body: int, body_seconds: float) -> None:
        self.app = cast(ASGIApp, WSGIMiddleware(app, workers=threads))
        self.max_body = max_body
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            # Refused on its header by the app: not one byte of it is read. The app has a copy
            # of the scope: a body never wanted is not "cut short" when the client stops it.
            body = b""
            scope = {k: v for k, v in scope.items() if k != BODY_CUT_SHORT}
        else:
            read = await self._read(receive)
            if read is None:
                return  # the client left
            body, late = read
            if late:
                scope[LATE_BODY] = True
            scope["headers"] = [
                (k, v)
                for k, v in scope["headers"]
                if k not in (b"content-length", b"transfer-encoding")
            ] + [(b"content-length", str(len(body)).encode())]
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, bool] | None:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_body or not message.get("more_body", False):
                        return b"".join(chunks), False
        except TimeoutError:
            return b"".join(chunks), True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, already read, as one message; then the connection's own (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def asgi(wsgi_app: Any, settings: Settings) -> WholeRequests:
    """``wsgi_app`` served as the web process serves Chorus's own."""
    return WholeRequests(
        wsgi_app,
        threads=settings.web_threads,
        max_body=settings.max_content_length,
        body_seconds=settings.request_body_timeout,
    )

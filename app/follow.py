"""Answers that Flask opens and the event loop follows: live event streams (``app.streams``)
and early-audio listeners (``app.listeners``).

The opening request goes through Flask like any other (auth, errors, request id). An answer
that is to go on after Flask returned carries a private response header saying what to follow
from where. A ``Following`` middleware, in front of the thread hand-off, strips that header
(and the Content-Length, so the answer goes chunked), lets Flask's body through, and then
keeps the connection open itself as one asyncio task: no thread is held while it follows.

The task ends when its work ends, when the client goes away, or when the server shuts down
(``END_STREAM``, called by ``app.webserver.HeaderDeadline``): an answer that would never end
by itself must not hold a stopping process until gunicorn kills it.

Served without the loop (plain WSGI, a test client), nothing follows: the answer is Flask's
alone, and the private header reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from app.webserver import END_STREAM, ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

Handle = TypeVar("Handle")
_END = {"type": "http.response.body", "body": b"", "more_body": False}


def header_fields(value: bytes) -> dict[str, str]:
    """A private header's ``name=value;…`` fields, each unquoted."""
    pairs = (part.partition("=") for part in value.decode("latin1").split(";"))
    return {name: unquote(field) for name, _, field in pairs}


class Following(Generic[Handle]):
    """ASGI middleware: follows the answers whose ``header`` the app set (see the module)."""

    header: bytes

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, path: str) -> bool:
        """Whether an answer on ``path`` may be followed (others pass untouched)."""
        raise NotImplementedError

    def opened(self, value: bytes) -> Handle | None:
        """The header's value, read as the answer starts: what to follow, or None."""
        raise NotImplementedError

    async def follow(self, handle: Handle, send: Send) -> None:
        """Send the rest of the answer (Flask's part is out); returns when it is complete."""
        raise NotImplementedError

    def closed(self, handle: Handle) -> None:
        """The answer is over, however it ended."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if (
            scope["type"] != "http"
            or method not in ("GET", "HEAD")
            or not self.wants(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        handle: Handle | None = None
        stopping = asyncio.Event()

        async def sending(message: Message) -> None:
            nonlocal handle
            if message["type"] == "http.response.start":
                headers = message["headers"]
                found = [v for k, v in headers if k == self.header]
                if found:
                    kept = [(k, v) for k, v in headers if k not in (self.header, b"content-length")]
                    message = {**message, "headers": kept}
                    # Only a GET follows (a HEAD of the same route gets the headers and ends).
                    handle = self.opened(found[0]) if method == "GET" else None
                    if handle is not None:
                        scope[END_STREAM] = stopping.set  # from here on, a stop ends it
            elif message["type"] == "http.response.body" and handle is not None:
                message = {**message, "more_body": True}
            await send(message)

        try:
            await self.app(scope, receive, sending)
            if handle is None:
                return
            try:
                await _until_done(self.follow(handle, send), receive, stopping)
            finally:
                await send(_END)
        finally:
            scope.pop(END_STREAM, None)
            if handle is not None:
                self.closed(handle)


async def _until_done(
    work: Coroutine[Any, Any, None], receive: Receive, stopping: asyncio.Event
) -> None:
    """Run ``work`` until it returns, the client disconnects, or the server stops."""
    task = asyncio.create_task(work)
    tasks = {
        task,
        asyncio.create_task(_disconnected(receive)),
        asyncio.create_task(stopping.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for each in tasks:
            each.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        log.error("a followed answer failed", exc_info=task.exception())


async def _disconnected(receive: Receive) -> None:
    # uvicorn drops what is sent to a gone client without a word: only this tells.
    while (await receive())["type"] != "http.disconnect":
        pass

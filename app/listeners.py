"""Early-audio listeners followed on the web process's event loop, not on its threads.

``GET /v1/files/preview/{token}`` goes through Flask like any other request
(``app.api.jobs.preview``): it checks the link and the job, and answers the song's pieces
stored so far with a private header (``PREVIEW``: the job, the last piece sent, the bytes
sent). ``Listeners`` (an ``app.follow.Following``) lets that head through and then keeps the
connection open itself, as one asyncio task fed by the process's ``PreviewTail``
(``app.jobs.preview_tail``): each new piece as the tail reads it, and once the job SUCCEEDED,
the rest of the song from the durable copy, read on the loop's executor ``REST_CHUNK`` bytes
at a time. Every send is awaited, so a client that reads slowly is sent to at its own pace.

A listener ends with the song, when the job ends without audio, when its client goes away,
when the server shuts down, or after AUDIO_LINK_TTL seconds (the link's own lifetime).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from app.follow import Following, header_fields
from app.jobs.preview_tail import Ended, Listener, PreviewTail
from app.storage import AudioStorage, StorageUnavailable
from app.webserver import ASGIApp, Send

log = logging.getLogger(__name__)

PREVIEW = b"x-chorus-preview"
PATH = "/v1/files/preview/"
# The durable copy is read this much at a time: one executor call, one send.
REST_CHUNK = 256 * 1024


def preview_header(job_id: str, after: int, sent: int) -> str:
    """What the app's head says: ``job_id``'s pieces up to ``after`` were sent, ``sent`` bytes."""
    return f"job={quote(job_id, safe='')};after={after};sent={sent}"


def parse_preview(value: bytes) -> Listener | None:
    """The listener the app's header describes (never the client's: it is the response's)."""
    fields = header_fields(value)
    try:
        return Listener(fields["job"], after=int(fields["after"]), sent=int(fields["sent"]))
    except (KeyError, ValueError):
        return None


class Listeners(Following[Listener]):
    """ASGI middleware: follows the listeners the app opened (see the module's docstring)."""

    header = PREVIEW

    def __init__(
        self, app: ASGIApp, tail: PreviewTail, storage: AudioStorage, *, seconds: float
    ) -> None:
        super().__init__(app)
        self.tail = tail
        self.storage = storage
        self.seconds = seconds

    def wants(self, path: str) -> bool:
        return path.startswith(PATH)

    def opened(self, value: bytes) -> Listener | None:
        # Counted from its first byte, so the app's check of the cap sees it at once.
        listener = parse_preview(value)
        if listener is not None:
            self.tail.listen(listener)
        return listener

    def closed(self, handle: Listener) -> None:
        self.tail.leave(handle)

    async def follow(self, handle: Listener, send: Send) -> None:
        try:
            async with asyncio.timeout(self.seconds):
                item = await self.tail.take(handle)
                while not isinstance(item, Ended):
                    await _write(send, item)
                    item = await self.tail.take(handle)
                if item.audio_key is not None:
                    await self._rest(handle, item.audio_key, send)
        except TimeoutError:
            log.info("preview of job %s: the link's lifetime is over", handle.job_id)

    async def _rest(self, listener: Listener, key: str, send: Send) -> None:
        """The durable copy from the byte the listener reached."""
        loop = asyncio.get_running_loop()
        try:
            size = await loop.run_in_executor(None, self.storage.size, key)
            start = listener.sent
            while start < size:
                end = min(start + REST_CHUNK, size) - 1
                chunk = await loop.run_in_executor(None, _read, self.storage, key, start, end)
                if not chunk:
                    return
                await _write(send, chunk)
                start += len(chunk)
        except (FileNotFoundError, StorageUnavailable):
            log.warning("preview of job %s: the stored audio could not be read", listener.job_id)


def _read(storage: AudioStorage, key: str, start: int, end: int) -> bytes:
    # Read whole in one call: no open stream is left behind when the listener goes.
    return b"".join(storage.stream(key, start, end))


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})

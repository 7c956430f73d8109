"""Live event streams followed on the web process's event loop, not on its threads.

The opening request of a stream goes through Flask like any other (``app.api.events``): it
answers ``text/event-stream`` with the stored events to replay and a private header saying
what to follow from where (``FOLLOW``). ``Streams`` (an ``app.follow.Following``) lets the
replay through and then keeps the connection open itself, as one asyncio task waiting on the
process's ``EventTail`` (``app.jobs.tail``). A thousand open streams hold no thread.

While the stream's job RUNS, ``progress`` events go at each tenth of its expected time
(``app.jobs.progress``); they carry no ``id:``, so a resume continues from the last stored
event. Silence is broken by a comment every EVENTS_KEEPALIVE_SECONDS. A job's stream ends
after its terminal event; a stream whose client reads too slowly to keep up ends early, and
so do all when the server shuts down: the client resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass

from app.db import utcnow
from app.follow import Following, header_fields
from app.jobs.journal import KEEP_ALIVE, PROGRESS, TERMINAL_EVENTS, frame
from app.jobs.tail import Basis, EventTail, Subscription
from app.webserver import ASGIApp, Send

FOLLOW = b"x-chorus-follow"
# A step is due at a tenth of the expected time; waking a little after it rounds up, not down.
STEP_SLACK = dt.timedelta(milliseconds=20)


@dataclass(frozen=True)
class Follow:
    after: int
    base_url: str
    job_id: str | None = None
    org_id: int | None = None


def parse_follow(value: bytes) -> Follow | None:
    """The header the API set (never the client's: it is the response's)."""
    fields = header_fields(value)
    try:
        after, base = int(fields["after"]), fields["base"]
        if "job" in fields:
            return Follow(after, base, job_id=fields["job"])
        return Follow(after, base, org_id=int(fields["org"]))
    except (KeyError, ValueError):
        return None


class Streams(Following[Follow]):
    """ASGI middleware: follows the streams the app opened (see the module's docstring)."""

    header = FOLLOW

    def __init__(self, app: ASGIApp, tail: EventTail, *, keepalive: float, max_streams: int):
        super().__init__(app)
        self.tail = tail
        self.keepalive = keepalive
        self.max_streams = max_streams

    def wants(self, path: str) -> bool:
        return path.endswith("/events")

    def opened(self, value: bytes) -> Follow | None:
        return parse_follow(value)

    async def follow(self, handle: Follow, send: Send) -> None:
        if self.tail.streams >= self.max_streams:
            return  # over the cap since the app's check: the client resumes
        sub = Subscription(
            after=handle.after, base_url=handle.base_url, job_id=handle.job_id, org_id=handle.org_id
        )
        self.tail.subscribe(sub)
        try:
            await self._pump(sub, send)
        finally:
            self.tail.unsubscribe(sub)

    async def _pump(self, sub: Subscription, send: Send) -> None:
        """Send the stream's events as they come, its progress, and keep-alives meanwhile."""
        basis: Basis | None = None
        step = 0  # the last tenth of progress sent

        async def write(body: bytes) -> None:
            await send({"type": "http.response.body", "body": body, "more_body": True})

        while not sub.overflowed:
            due = basis.next_step_at(step + 1) if basis is not None else None
            wait = self.keepalive
            if due is not None:
                wait = min(wait, max((due + STEP_SLACK - utcnow()).total_seconds(), 0.0))
            try:
                item = await asyncio.wait_for(sub.queue.get(), wait)
            except TimeoutError:
                sent, step = _progress(sub, basis, step)
                await write(sent or KEEP_ALIVE)
                continue
            if item.basis is not None and sub.job_id is not None:
                basis = item.basis
            if item.event is not None:
                await write(frame(item.event, item.data, item.id))
                if sub.job_id is not None and item.event in TERMINAL_EVENTS:
                    return
            # Joining a job already well along says where it is at once.
            sent, step = _progress(sub, basis, step)
            if sent:
                await write(sent)


def _progress(sub: Subscription, basis: Basis | None, step: int) -> tuple[bytes | None, int]:
    """A ``progress`` event if the job has reached a tenth not sent yet; the tenth sent."""
    if basis is None or sub.job_id is None:
        return None, step
    data = basis.progress(sub.job_id, utcnow())
    if data is None:
        return None, step
    reached = int(data["progress"] * 10 + 1e-9)
    if reached <= step:
        return None, step
    return frame(PROGRESS, json.dumps(data)), reached

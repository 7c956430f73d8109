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
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from app.db import utcnow
from app.follow import Following, header_fields
from app.jobs.journal import KEEP_ALIVE, PROGRESS, TERMINAL_EVENTS, frame
from app.jobs.subscription import Basis, Subscription
from app.jobs.tail import EventTail
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
            await pump(sub, send, keepalive=self.keepalive)
        finally:
            self.tail.unsubscribe(sub)


async def pump(sub: Subscription, send: Send, *, keepalive: float) -> None:
    """Send the stream's events as they come, its progress, and keep-alives meanwhile.

    Whatever waits when the stream wakes goes in one write. The stream waits on a bare
    future, woken by the tail's offers or by one timer of its own (its next progress step
    or keep-alive), which is moved only when it must come sooner: a stream that gets an
    event every second does not make and cancel a timer for each.

    While an org's stream waits, what the tail offers it is written by the offer itself
    (``Subscription.direct``), within the tail's fan-out, without waking this task: for a
    thousand streams given the same event, a wake-up of each costs more than its write. A
    job's stream always wakes: each of its events may bring progress or its end."""
    loop = asyncio.get_running_loop()
    basis: Basis | None = None
    step = 0  # the last tenth of progress sent
    wrote_at = loop.time()
    timer: asyncio.TimerHandle | None = None  # None: not set, or gone off
    timer_at = 0.0
    # A direct write the client could not take at once: this task finishes it (or its error).
    stalled: tuple[Coroutine[Any, Any, None], Any] | None = None
    failed: BaseException | None = None

    def ring() -> None:
        nonlocal timer
        timer = None
        sub.wake()

    def write_now() -> None:
        """``sub.direct``: set only while this task waits, and not yet woken."""
        nonlocal wrote_at, stalled, failed
        taken = sub.take()
        body = taken[0].frame if len(taken) == 1 else b"".join(d.frame for d in taken)
        message = {"type": "http.response.body", "body": body, "more_body": True}
        sending = cast(Coroutine[Any, Any, None], send(message))
        try:
            waits_on = sending.send(None)  # as far as it goes without waiting
        except StopIteration:
            wrote_at = loop.time()
            return
        except Exception as exc:  # noqa: BLE001 - raised in the stream's own task, not here
            failed = exc
        else:
            stalled = (sending, waits_on)  # the client is slow: this task finishes it
        sub.wake()

    try:
        while not sub.overflowed:
            if stalled is not None:
                sending, waits_on = stalled
                stalled = None
                await _run_on(sending, waits_on)
                wrote_at = loop.time()
            if failed is not None:
                raise failed
            taken = sub.take()
            parts: list[bytes] = []
            ended = False
            for item in taken:
                if item.basis is not None and sub.job_id is not None:
                    basis = item.basis
                if item.event is not None:
                    parts.append(item.frame)
                    if sub.job_id is not None and item.event in TERMINAL_EVENTS:
                        ended = True
                        break
                # Joining a job already well along says where it is at once.
                sent, step = _progress(sub, basis, step)
                if sent:
                    parts.append(sent)
            if not taken and loop.time() >= _due(loop, basis, step, wrote_at, keepalive):
                sent, step = _progress(sub, basis, step)
                parts.append(sent or KEEP_ALIVE)
            if parts:
                body = b"".join(parts)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                wrote_at = loop.time()
            if ended:
                return
            if sub.pending or sub.overflowed:
                continue  # more came while it was being sent
            due = _due(loop, basis, step, wrote_at, keepalive)
            if timer is None or due < timer_at:
                if timer is not None:
                    timer.cancel()
                timer, timer_at = loop.call_at(due, ring), due
            if sub.job_id is None:
                sub.direct = write_now
            try:
                await sub.wait()
            finally:
                sub.direct = None
    finally:
        if timer is not None:
            timer.cancel()
        if stalled is not None:
            stalled[0].close()  # the stream ended before its client took the last write


async def _run_on(coroutine: Coroutine[Any, Any, None], waits_on: Any) -> None:
    """Finish, in this task, a coroutine that was run by hand until it had to wait, as a task
    would have: wait for what it waits on, resume it, again until it returns (Python 3.12's
    eager tasks do this; 3.11 has none). Its errors come out of it; cancelled, it is closed."""
    try:
        while True:
            if waits_on is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((waits_on,))
            try:
                waits_on = coroutine.send(None)
            except StopIteration:
                return
    finally:
        coroutine.close()  # nothing once it has returned


def _due(
    loop: asyncio.AbstractEventLoop,
    basis: Basis | None,
    step: int,
    wrote_at: float,
    keepalive: float,
) -> float:
    """When, on the loop's clock, the stream next says something unasked: a keep-alive
    after ``keepalive`` seconds of silence, or its job's next tenth, whichever is sooner."""
    due = wrote_at + keepalive
    at = basis.next_step_at(step + 1) if basis is not None else None
    if at is not None:
        due = min(due, loop.time() + (at + STEP_SLACK - utcnow()).total_seconds())
    return due


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

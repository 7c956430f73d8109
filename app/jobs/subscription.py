"""One open live stream as the event tail sees it (``app.jobs.tail``): a ``Subscription``
the tail offers ``Delivery``s to, each framed once for every stream of its origin, and the
``Basis`` a job stream's progress is computed from. The stream's sender (``app.streams``)
takes what waits, or, while idle, has it handed over at once (``Subscription.direct``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.jobs import journal
from app.jobs.progress import estimate
from app.jobs.status import JobStatus


@dataclass(frozen=True)
class Basis:
    """What a job stream's progress is computed from: the job as the event's read found it."""

    status: str
    started_at: dt.datetime | None
    expected_seconds: float | None

    def progress(self, job_id: str, now: dt.datetime) -> dict[str, Any] | None:
        guess = estimate(self.status, self.started_at, self.expected_seconds, now)
        if guess.progress is None or self.status != JobStatus.RUNNING:
            return None
        eta = int(guess.eta.timestamp()) if guess.eta else None
        return {"id": job_id, "progress": guess.progress, "eta": eta}

    def next_step_at(self, step: int) -> dt.datetime | None:
        """When a RUNNING job reaches ``step`` tenths (never 10: that is its success)."""
        if self.status != JobStatus.RUNNING or not self.started_at or not self.expected_seconds:
            return None
        if step >= 10:
            return None
        return self.started_at + dt.timedelta(seconds=self.expected_seconds * step / 10)


@dataclass(frozen=True)
class Delivery:
    """An event for the streams of one origin: ``event`` None only tells a stream its job's
    ``basis``. Its bytes on the wire (``frame``) are made once, whatever the number of streams
    it goes to."""

    id: int | None
    event: str | None
    data: str
    basis: Basis | None = None
    frame: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        framed = journal.frame(self.event, self.data, self.id) if self.event is not None else b""
        object.__setattr__(self, "frame", framed)


@dataclass(eq=False)
class Subscription:
    """One open stream: a job's (``job_id``) or an org's. ``after`` is the last event it has.

    What the tail offers waits in ``pending`` until the stream's sender takes all of it at
    once (``take``): events that came together go out together. Past ``limit`` waiting, the
    client reads too slowly to keep up: ``overflowed``, and the stream ends. While its sender
    is idle it may set ``direct``: an offer then calls it there and then, to write what is
    pending, instead of waking the sender's task."""

    after: int
    base_url: str
    job_id: str | None = None
    org_id: int | None = None
    limit: int = 10_000
    ready: bool = False  # caught up: given live events from now on
    overflowed: bool = False  # its client reads too slowly: the stream ends, the client resumes
    pending: deque[Delivery] = field(init=False, default_factory=deque)
    direct: Callable[[], None] | None = field(init=False, default=None, repr=False)
    _waiter: asyncio.Future[None] | None = field(init=False, default=None, repr=False)

    def offer_late(self, delivery: Delivery) -> None:
        """An event that committed after later ones went out: sent once all the same, and
        without its id where that would move the client's resume point back."""
        if delivery.id is not None and delivery.id <= self.after:
            delivery = Delivery(None, delivery.event, delivery.data, delivery.basis)
        self.offer(delivery)

    def offer(self, delivery: Delivery) -> None:
        self.offer_all((delivery,))

    def offer_all(self, deliveries: Iterable[Delivery]) -> None:
        """Events in id order (none twice, none older than ``after``), sent in one write."""
        was_empty = not self.pending
        for delivery in deliveries:
            if delivery.id is not None:
                if delivery.id <= self.after:
                    continue
                self.after = delivery.id
            if len(self.pending) >= self.limit:
                self.overflowed = True
                self.wake()
                return
            self.pending.append(delivery)
        if not self.pending:
            return
        if self.direct is not None:
            self.direct()
        elif was_empty:  # else it was woken for the first ones and has yet to take them
            self.wake()

    def take(self) -> list[Delivery]:
        """Everything waiting, oldest first; nothing waits after."""
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def wake(self) -> None:
        """Let ``wait`` return: the sender's task takes over (``direct`` is unset)."""
        self.direct = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something is pending, the stream overflowed, or ``wake`` is called. A bare
        future: the cheapest thing a thousand idle streams can wait on."""
        if self.pending or self.overflowed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

"""A live stream's sender (``app.streams.pump``) on a real event loop: what the tail offers
goes out in order, what waits together goes in one write, silence gets keep-alives, a job's
stream says its progress and ends after its terminal event, and a client that stops reading
makes its stream overflow and end (on a real socket, with the transport's own back-pressure).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from app.db import utcnow
from app.jobs.journal import KEEP_ALIVE, frame
from app.jobs.status import JobStatus
from app.jobs.subscription import Basis, Delivery, Subscription
from app.streams import pump
from app.webserver import Message, Send
from tests.sockets import read_until_closed

RUNNING = "music.generation.running"
SUCCEEDED = "music.generation.succeeded"


class Recorder:
    """An ASGI ``send`` that keeps each body written, with the loop's time it was written."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []

    async def __call__(self, message: Message) -> None:
        assert message["type"] == "http.response.body" and message["more_body"]
        self.writes.append((asyncio.get_running_loop().time(), message["body"]))

    async def write(self, number: int) -> bytes:
        """The ``number``th body written (from 1), once it has been."""
        async with asyncio.timeout(10):
            while len(self.writes) < number:
                await asyncio.sleep(0.005)
        return self.writes[number - 1][1]


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def event(event_id: int, name: str = RUNNING, data: str = '{"id": "job"}') -> Delivery:
    return Delivery(event_id, name, data)


def test_events_offered_together_go_out_in_one_write_in_their_order() -> None:
    async def scenario() -> list[bytes]:
        sub = Subscription(after=0, base_url="http://chorus", org_id=1)
        for event_id in (1, 2, 3):  # before the sender first looks
            sub.offer(event(event_id))
        send = Recorder()
        task = asyncio.create_task(pump(sub, send, keepalive=60))
        await send.write(1)
        await asyncio.sleep(0.05)  # waiting: what comes now is written by the offer itself
        sub.offer_all([event(4), event(3), event(5)])  # 3 again: not sent twice
        assert len(send.writes) == 2
        sub.offer(event(6))
        assert len(send.writes) == 3
        task.cancel()
        return [body for _, body in send.writes]

    assert run(scenario) == [
        frame(RUNNING, '{"id": "job"}', 1)
        + frame(RUNNING, '{"id": "job"}', 2)
        + frame(RUNNING, '{"id": "job"}', 3),
        frame(RUNNING, '{"id": "job"}', 4) + frame(RUNNING, '{"id": "job"}', 5),
        frame(RUNNING, '{"id": "job"}', 6),
    ]


def test_a_job_stream_offered_several_events_sends_them_in_one_write() -> None:
    async def scenario() -> list[bytes]:
        sub = Subscription(after=0, base_url="http://chorus", job_id="job")
        send = Recorder()
        task = asyncio.create_task(pump(sub, send, keepalive=60))
        await asyncio.sleep(0.05)
        sub.offer(event(1))
        sub.offer(event(2))
        await send.write(1)
        await asyncio.sleep(0.05)
        task.cancel()
        return [body for _, body in send.writes]

    assert run(scenario) == [
        frame(RUNNING, '{"id": "job"}', 1) + frame(RUNNING, '{"id": "job"}', 2)
    ]


def test_silence_gets_a_keep_alive_and_an_event_puts_the_next_one_off() -> None:
    keepalive = 0.5

    async def scenario() -> list[tuple[float, bytes]]:
        sub = Subscription(after=0, base_url="http://chorus", org_id=1)
        send = Recorder()
        began = asyncio.get_running_loop().time()
        task = asyncio.create_task(pump(sub, send, keepalive=keepalive))
        assert await send.write(1) == KEEP_ALIVE
        sub.offer(event(1))
        await send.write(2)
        assert await send.write(3) == KEEP_ALIVE
        task.cancel()
        return [(at - began, body) for at, body in send.writes]

    (first, alive), (sent, _), (second, again) = run(scenario)
    assert alive == again == KEEP_ALIVE
    assert first >= keepalive
    assert second - sent >= keepalive  # counted from the event, not from the keep-alive before


def test_a_job_stream_says_its_progress_and_ends_after_its_terminal_event() -> None:
    expected = 2.0

    async def scenario() -> list[bytes]:
        sub = Subscription(after=0, base_url="http://chorus", job_id="job")
        # Joined at a third of the way: that tenth says so at once, the next ones as they come.
        started = utcnow() - dt.timedelta(seconds=expected * 0.35)
        running = Basis(JobStatus.RUNNING, started, expected)
        sub.offer(Delivery(1, RUNNING, '{"id": "job"}', running))
        send = Recorder()
        task = asyncio.create_task(pump(sub, send, keepalive=60))
        await send.write(3)
        done = Basis(JobStatus.SUCCEEDED, started, expected)
        sub.offer(Delivery(2, SUCCEEDED, '{"id": "job"}', done))
        sub.offer(Delivery(3, RUNNING, '{"id": "job"}', running))  # nothing after the end
        await asyncio.wait_for(task, 10)
        return [body for _, body in send.writes]

    writes = run(scenario)
    assert writes[0].startswith(frame(RUNNING, '{"id": "job"}', 1))
    progress = [
        json.loads(data)["progress"]
        for body in writes
        for data in re.findall(rb"event: progress\ndata: (.*)\n\n", body)
    ]
    assert 0.3 <= progress[0] < 0.5, progress  # at once, then a write at each tenth
    assert progress == sorted(progress) and len(progress) >= 3 and progress[-1] < 1, progress
    assert len({int(p * 10) for p in progress}) == len(progress), progress
    assert writes[-1] == frame(SUCCEEDED, '{"id": "job"}', 2)


PAYLOAD = json.dumps({"id": "job", "pad": "x" * 8000})


async def unread_connection() -> tuple[socket.socket, asyncio.StreamWriter, Send]:
    """A connection with small buffers, its client's end (not read yet), and an ASGI send
    that waits, as uvicorn's does, while the transport's buffer is full."""
    ours, theirs = socket.socketpair()
    for sock, option in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    theirs.setblocking(False)
    _, writer = await asyncio.open_connection(sock=ours)
    writer.transport.set_write_buffer_limits(high=16384)

    async def send(message: Message) -> None:
        writer.write(message["body"])
        await writer.drain()

    return theirs, writer, send


def test_a_stream_whose_client_stops_reading_overflows_and_ends() -> None:
    """The client reads nothing while far more than ``limit`` events come: the stream ends
    once what was written is read, and what the client got is every event up to some point,
    in order, none twice: it resumes from there with ``Last-Event-ID``."""
    limit, offered = 20, 400

    async def scenario() -> tuple[list[int], bool]:
        theirs, writer, send = await unread_connection()
        sub = Subscription(after=0, base_url="http://chorus", org_id=1, limit=limit)
        task = asyncio.create_task(pump(sub, send, keepalive=60))
        for event_id in range(1, offered + 1):
            sub.offer(event(event_id, data=PAYLOAD))
            await asyncio.sleep(0)
        overflowed = sub.overflowed

        def close_once_ended() -> None:
            if task.done() and not writer.is_closing():
                writer.close()  # after what is buffered

        # The client reads again: the stream ends, and its end comes through.
        received = await read_until_closed(theirs, each_round=close_once_ended)
        await task
        theirs.close()
        return [int(i) for i in re.findall(rb"id: (\d+)\n", received)], overflowed

    ids, overflowed = run(scenario)
    assert overflowed
    assert ids == list(range(1, len(ids) + 1))
    assert 0 < len(ids) < 400


def test_a_stream_stuck_on_a_client_that_reads_nothing_ends_when_the_client_leaves() -> None:
    """A write the client could not take at once is finished by the stream's task; when the
    stream ends meanwhile (the client left, the server stops), it ends there, cleanly."""

    async def scenario() -> tuple[bool, int]:
        theirs, writer, send = await unread_connection()
        sub = Subscription(after=0, base_url="http://chorus", org_id=1)
        task = asyncio.create_task(pump(sub, send, keepalive=60))
        await asyncio.sleep(0.05)
        for event_id in range(1, 11):
            sub.offer(event(event_id, data=PAYLOAD))
        await asyncio.sleep(0.05)
        stuck = not task.done() and sub.direct is None  # its task took over the stalled write
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        waiting = len(sub.pending)
        writer.close()
        theirs.close()
        return stuck and task.cancelled(), waiting

    ended, waiting = run(scenario)
    assert ended
    assert waiting > 0  # what came while it was stuck was never sent, and ends with it

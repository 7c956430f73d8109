"""The early-audio reader (``app.jobs.preview_tail``) on real Postgres: one read serves every
listener of every job, each in order from its own position; a job's end follows its last
pieces; a listener that does not take its pieces is handed no more than its queue's bound,
and still hears the whole song."""

from __future__ import annotations

import asyncio

import pytest

from app.db import Database
from app.jobs.preview_tail import QUEUE_BYTES, Ended, Listener, PreviewTail
from config import Settings
from tests.conftest import statements_on
from tests.unit.jobs.support import end_streaming_job, store_pieces, streaming_job

pytestmark = pytest.mark.usefixtures("catalog", "api_key")


async def heard(tail: PreviewTail, listener: Listener, until: int) -> list[bytes | Ended]:
    """What the listener takes until it has ``until`` items or its job's end."""
    got: list[bytes | Ended] = []
    while len(got) < until:
        got.append(await asyncio.wait_for(tail.take(listener), 10))
        if isinstance(got[-1], Ended):
            break
    return got


def test_one_read_serves_every_listener_of_every_job_from_its_own_position(
    db: Database, settings: Settings
) -> None:
    song, other = streaming_job(db, settings), streaming_job(db, settings)
    store_pieces(db, song, [b"s0", b"s1", b"s2"])
    store_pieces(db, other, [b"o0"])
    tail = PreviewTail(db, recheck=30)  # no round but the one a listener wakes

    async def scenario() -> None:
        fresh = Listener(song, after=-1, sent=0)
        joined = Listener(song, after=0, sent=2)  # s0 was in the app's head
        elsewhere = Listener(other, after=-1, sent=0)
        with statements_on(db=db.engine) as seen:
            for listener in (fresh, joined, elsewhere):
                tail.listen(listener)
            assert await heard(tail, fresh, 3) == [b"s0", b"s1", b"s2"]
            assert await heard(tail, joined, 2) == [b"s1", b"s2"]
            assert await heard(tail, elsewhere, 1) == [b"o0"]
        assert len(seen["db"]) == 1, seen["db"]  # every listener, every job: one query
        assert (fresh.sent, joined.sent, elsewhere.sent) == (6, 6, 2)
        assert tail.listeners == 3

        tail.recheck = 0.05  # from the next round on
        store_pieces(db, song, [b"s3"], first=3)
        late = Listener(song, after=2, sent=6)
        tail.listen(late)  # a new listener is read for at once
        assert await heard(tail, late, 1) == [b"s3"]
        assert await heard(tail, fresh, 1) == [b"s3"]
        end_streaming_job(db, song, "SUCCEEDED", "song.wav")
        end_streaming_job(db, other, "FAILED")
        assert await heard(tail, fresh, 2) == [Ended("song.wav")]
        assert await heard(tail, joined, 2) == [b"s3", Ended("song.wav")]
        assert await heard(tail, late, 2) == [Ended("song.wav")]
        assert await heard(tail, elsewhere, 2) == [Ended(None)]
        for listener in (fresh, joined, late, elsewhere):
            tail.leave(listener)
        assert tail.listeners == 0
        with statements_on(db=db.engine) as seen:
            await asyncio.sleep(0.3)
        assert seen["db"] == []  # nobody listens: nothing is read

    asyncio.run(scenario())


def test_a_listener_that_does_not_take_is_bounded_and_still_hears_everything(
    db: Database, settings: Settings
) -> None:
    job_id = streaming_job(db, settings)
    piece = 64 * 1024
    song = [bytes([i]) * piece for i in range(12)]
    store_pieces(db, job_id, song)
    tail = PreviewTail(db, recheck=0.05)

    async def scenario() -> bytes:
        slow = Listener(job_id, after=-1, sent=0)
        tail.listen(slow)
        await asyncio.sleep(0.5)  # ten rounds, and nothing taken
        assert slow.queued == QUEUE_BYTES and slow.full
        assert slow.after == QUEUE_BYTES // piece - 1
        got = b""
        for _ in range(len(song)):
            item = await asyncio.wait_for(tail.take(slow), 10)
            assert isinstance(item, bytes)
            assert slow.queued <= QUEUE_BYTES
            got += item
        end_streaming_job(db, job_id, "SUCCEEDED", "song.wav")
        assert await heard(tail, slow, 1) == [Ended("song.wav")]
        assert slow.sent == len(got)
        tail.leave(slow)
        return got

    assert asyncio.run(scenario()) == b"".join(song)

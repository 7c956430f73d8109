"""The event tail's contiguity (``app.jobs.tail``): bigserial ids commit out of order, and no
event may be skipped because a later one was seen first, nor held for ever behind an id that
will never commit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database, utcnow
from app.jobs.models import JobEvent
from app.jobs.subscription import Delivery, Subscription
from app.jobs.tail import LATE_GAP_MAX, LATE_SECONDS, EventTail, Gaps
from app.storage import make_storage
from app.tenancy.models import Org
from config import Settings
from tests.conftest import GOOD_BODY, auth


def test_contiguous_rows_go_out_at_once_in_order() -> None:
    gaps = Gaps(cursor=10, gap_seconds=2)
    gaps.add([(12, 12), (11, 11), (13, 13)], now=0.0)
    assert gaps.release(now=0.0) == [11, 12, 13]
    assert gaps.cursor == 13 and not gaps.held


def test_a_row_after_a_gap_waits_for_the_gap_to_fill() -> None:
    gaps = Gaps(cursor=10, gap_seconds=2)
    gaps.add([(12, 12)], now=0.0)
    assert gaps.release(now=1.0) == []
    assert gaps.cursor == 10
    gaps.add([(11, 11), (12, "12 again")], now=1.5)  # 12 read again: kept once, as read last
    assert gaps.release(now=1.5) == [11, "12 again"]
    assert gaps.cursor == 12


def test_a_gap_older_than_gap_seconds_is_given_up() -> None:
    gaps = Gaps(cursor=10, gap_seconds=2)
    gaps.add([(12, 12)], now=0.0)
    gaps.add([(12, 12), (14, 14)], now=1.5)  # 12 read again: still missing 11 since 0.0
    # 11 has been missing since 12 was seen (2.1 s): given up. 13 only since 14 was (0.6 s).
    assert gaps.release(now=2.1) == [12]
    assert gaps.cursor == 12
    assert gaps.release(now=3.4) == []
    assert gaps.release(now=3.6) == [14]
    # An id below the cursor (an insert that committed after it was given up) is not taken.
    gaps.add([(11, 11), (13, 13)], now=4.0)
    assert gaps.release(now=4.0) == [] and not gaps.held


def test_ids_given_up_are_looked_for_a_while_then_forgotten() -> None:
    gaps = Gaps(cursor=10, gap_seconds=2)
    gaps.add([(13, 13)], now=0.0)
    assert gaps.release(now=2.5) == [13]
    assert gaps.late_ids(now=2.5) == [11, 12]
    del gaps.missing[11]  # found: the tail drops it once delivered
    assert gaps.late_ids(now=2.5 + LATE_SECONDS) == [12]
    assert gaps.late_ids(now=2.6 + LATE_SECONDS) == []


def test_a_gap_too_wide_for_any_insert_is_not_looked_for() -> None:
    gaps = Gaps(cursor=10, gap_seconds=2)
    gaps.add([(12 + LATE_GAP_MAX, "far")], now=0.0)
    assert gaps.release(now=3.0) == ["far"]
    assert gaps.late_ids(now=3.0) == []


@pytest.mark.usefixtures("catalog")
def test_an_event_committed_after_a_later_one_still_reaches_the_stream_in_order(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    """Two real transactions: the one holding the lower id commits last."""
    response = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    job = response.get_json()
    with db.session() as session:
        queued = session.scalar(sa.select(JobEvent.id))
    tail = EventTail(settings, db, make_storage(settings), poll_seconds=0.05, gap_seconds=30)

    def insert(session: Any, kind: str) -> int:
        row = {"job_id": job["id"], "org_id": 0, "type": kind, "created_at": utcnow()}
        event_id: int = session.scalar(sa.insert(JobEvent).values(row).returning(JobEvent.id))
        return event_id

    async def follow() -> list[tuple[int | None, str | None]]:
        sub = Subscription(after=queued, base_url="http://chorus", job_id=job["id"])
        tail.subscribe(sub)
        slow, quick = db.session(), db.session()
        try:
            first = insert(slow, "music.generation.running")  # open: not yet visible
            second = insert(quick, "music.generation.succeeded")
            quick.commit()
            assert second > first
            await asyncio.sleep(0.6)  # a dozen reads: the later one is held behind the gap
            held = [d.id for d in _drain(sub) if d.event]
            slow.commit()
            got: list[Delivery] = []
            while len(got) < 2:
                got.extend(d for d in await _next(sub) if d.event)
        finally:
            slow.close()
            quick.close()
            tail.unsubscribe(sub)
        assert held == []
        return [(d.id, d.event) for d in got]

    events = asyncio.run(follow())
    assert [name for _, name in events] == [
        "music.generation.running",
        "music.generation.succeeded",
    ]
    assert events[0][0] is not None and events[1][0] is not None and events[0][0] < events[1][0]


def _drain(sub: Subscription) -> list[Delivery]:
    return sub.take()


async def _next(sub: Subscription) -> list[Delivery]:
    """What the tail offers next (all that waits, once something does)."""
    await asyncio.wait_for(sub.wait(), 10)
    return sub.take()


@pytest.mark.usefixtures("catalog")
def test_an_event_committed_after_its_gap_was_given_up_still_reaches_the_org_stream(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    """Two real transactions: the lower id commits well after the tail gave its gap up."""
    response = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    job = response.get_json()
    with db.session() as session:
        queued = session.scalar(sa.select(JobEvent.id))
        org_id = session.scalar(sa.select(JobEvent.org_id))
    tail = EventTail(settings, db, make_storage(settings), poll_seconds=0.05, gap_seconds=0.2)

    def insert(session: Any, kind: str) -> int:
        row = {"job_id": job["id"], "org_id": org_id, "type": kind, "created_at": utcnow()}
        event_id: int = session.scalar(sa.insert(JobEvent).values(row).returning(JobEvent.id))
        return event_id

    async def follow() -> list[tuple[int | None, str | None]]:
        sub = Subscription(after=queued, base_url="http://chorus", org_id=org_id)
        tail.subscribe(sub)
        slow, quick = db.session(), db.session()
        got: list[Delivery] = []
        try:
            insert(slow, "music.generation.running")  # open: not yet visible
            insert(quick, "music.generation.succeeded")
            quick.commit()
            while not got:  # given up waiting for the gap: the later one goes out
                got.extend(d for d in await _next(sub) if d.event)
            slow.commit()
            while len(got) < 2:
                got.extend(d for d in await _next(sub) if d.event)
        finally:
            slow.close()
            quick.close()
            tail.unsubscribe(sub)
        return [(d.id, d.event) for d in got]

    (first_id, first), (late_id, late) = asyncio.run(follow())
    assert (first, late) == ("music.generation.succeeded", "music.generation.running")
    assert first_id is not None and late_id is None  # the resume point stays at the newest


@pytest.mark.usefixtures("catalog")
def test_the_events_of_one_read_reach_each_stream_together_framed_once(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    """Three events committed together: each of two org streams is handed all three at once
    (one write), and both streams are given the very same bytes, framed once."""
    response = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    job = response.get_json()
    with db.session() as session:
        queued = session.scalar(sa.select(JobEvent.id))
        org_id = session.scalar(sa.select(JobEvent.org_id))
    tail = EventTail(settings, db, make_storage(settings), poll_seconds=0.05, gap_seconds=30)
    kinds = ["music.generation.running", "music.generation.failed", "music.generation.cancelled"]

    async def follow() -> list[list[Delivery]]:
        subs = [Subscription(after=queued, base_url="http://chorus", org_id=org_id) for _ in "ab"]
        handed: list[list[Delivery]] = []
        for sub in subs:
            tail.subscribe(sub)
            # What a waiting stream's sender does with an offer: take it all, there and then.
            sub.direct = lambda sub=sub: handed.append(sub.take())
        try:
            async with asyncio.timeout(10):
                while not all(sub.ready for sub in subs):
                    await asyncio.sleep(0.01)
                with db.transaction() as session:
                    session.execute(
                        sa.insert(JobEvent).values(
                            [
                                {
                                    "job_id": job["id"],
                                    "org_id": org_id,
                                    "type": k,
                                    "created_at": utcnow(),
                                }
                                for k in kinds
                            ]
                        )
                    )
                while len(handed) < 2:
                    await asyncio.sleep(0.01)
        finally:
            for sub in subs:
                tail.unsubscribe(sub)
        return handed

    first, second = asyncio.run(follow())
    assert [d.event for d in first] == kinds
    assert [d.frame for d in first] == [d.frame for d in second]
    assert all(a is b for a, b in zip(first, second, strict=True))  # one Delivery, not a copy
    ids = [d.id for d in first]
    assert ids == sorted(ids) and len(set(ids)) == 3


@pytest.mark.env(REDIS_URL="")
@pytest.mark.usefixtures("catalog")
def test_a_submit_wakes_the_tail_through_the_doorbell_without_redis(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    """The embedded shape has no Redis: the queued event of a new job reaches an open org
    stream because the submit rang the doorbell, long before the tail's own poll (60 s)."""
    assert settings.redis_url is None
    tail = EventTail(settings, db, make_storage(settings), poll_seconds=60, gap_seconds=30)

    def listening() -> bool:
        with db.session() as session:
            return bool(
                session.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'chorus doorbell listener'"
                        " AND query = 'LISTEN chorus_due'"
                    )
                )
            )

    async def follow() -> tuple[str, list[Delivery]]:
        sub = Subscription(after=0, base_url="http://chorus", org_id=_org_id(db, "acme"))
        tail.subscribe(sub)
        handed: list[Delivery] = []
        sub.direct = lambda: handed.extend(sub.take())
        try:
            async with asyncio.timeout(15):
                while not (sub.ready and await asyncio.to_thread(listening)):
                    await asyncio.sleep(0.02)
                posted = await asyncio.to_thread(
                    client.post, "/v1/music/generations", json=GOOD_BODY, headers=auth(api_key)
                )
                assert posted.status_code == 202, posted.get_data()
                while not handed:
                    await asyncio.sleep(0.02)
        finally:
            tail.unsubscribe(sub)
            assert tail._task is not None
            tail._task.cancel()
        return posted.get_json()["id"], handed

    job_id, handed = asyncio.run(follow())
    assert [d.event for d in handed] == ["music.generation.queued"]
    assert f'"id": "{job_id}"' in handed[0].frame.decode()


def _org_id(db: Database, name: str) -> int:
    with db.session() as session:
        return int(session.scalar(sa.select(Org.id).where(Org.name == name)))

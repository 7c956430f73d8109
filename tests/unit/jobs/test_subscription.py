"""One open stream as the tail sees it (``app.jobs.subscription``): what it is offered goes
out once, in id order, and never moves the client's resume point back."""

from __future__ import annotations

import asyncio

from app.jobs.subscription import Delivery, Subscription


def test_a_late_event_keeps_the_resume_point_where_it_is() -> None:
    async def offered() -> list[int | None]:
        sub = Subscription(after=5, base_url="http://x")
        sub.offer(Delivery(7, "e", "{}"))
        sub.offer_late(Delivery(6, "e", "{}"))  # committed after 7 went out
        sub.offer_late(Delivery(8, "e", "{}"))
        return [d.id for d in sub.take()]

    assert asyncio.run(offered()) == [7, None, 8]


def test_a_subscription_never_takes_an_event_twice_nor_an_older_one() -> None:
    async def offered() -> list[int | None]:
        sub = Subscription(after=5, base_url="http://x")
        for event_id in (4, 5, 6, 6, None, 7):
            sub.offer(Delivery(event_id, "e" if event_id else None, "{}"))
        return [d.id for d in sub.take()]

    assert asyncio.run(offered()) == [6, None, 7]


def test_past_its_limit_a_stream_overflows_and_is_given_no_more() -> None:
    sub = Subscription(after=0, base_url="http://x", limit=3)
    sub.offer_all([Delivery(i, "e", "{}") for i in (1, 2, 3, 4)])
    sub.offer(Delivery(5, "e", "{}"))
    assert sub.overflowed
    assert [d.id for d in sub.take()] == [1, 2, 3]


def test_an_idle_sender_is_handed_all_that_comes_at_once_until_it_is_woken() -> None:
    sub = Subscription(after=0, base_url="http://x")
    handed: list[list[int | None]] = []
    sub.direct = lambda: handed.append([d.id for d in sub.take()])
    sub.offer_all([Delivery(1, "e", "{}"), Delivery(2, "e", "{}")])
    sub.offer(Delivery(2, "e", "{}"))  # already had: nothing to hand over
    sub.offer(Delivery(3, "e", "{}"))
    assert handed == [[1, 2], [3]]
    sub.wake()  # the sender's own task takes over: what comes now waits for it
    sub.offer(Delivery(4, "e", "{}"))
    assert handed == [[1, 2], [3]]
    assert [d.id for d in sub.take()] == [4]

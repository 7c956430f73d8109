"""Reading ``Prefer: wait`` (RFC 7240) and the waiter cap's settings."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from app.jobs.waiting import requested_wait
from config import load_settings


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["wait=5"], 5),
        (["Wait = 5"], 5),  # RFC 7240: names are case-insensitive, "=" may have spaces
        (["WAIT=5"], 5),
        (["wait"], 60),
        (["wait=600"], 60),
        (['wait="7"'], 7),
        (["wait=0"], None),
        (["wait=soon"], None),
        (["wait=-3"], None),
        (["wait=1.5"], None),
        (["respond-async, wait=9"], 9),
        (["return=minimal; foo=bar", "wait=4"], 4),
        (["wait=3; lenient", "wait=50"], 3),  # only the first instance counts
        (["handling=strict"], None),
        (["wait=" + "9" * 5000], 60),  # past Python's 4,300-digit limit on int()
        (["wait=" + "0" * 5000 + "7"], 7),
        (["wait=" + "0" * 5000], None),
    ],
)
def test_prefer_wait(values: list[str], expected: int | None) -> None:
    headers = Headers([("Prefer", v) for v in values])
    assert requested_wait(headers) == expected


def test_waiters_default_to_three_quarters_of_the_threads() -> None:
    assert load_settings({}).web_threads == 32
    assert load_settings({}).wait_max_waiters == 24
    assert load_settings({"WEB_THREADS": "8"}).wait_max_waiters == 6


def test_waiters_must_leave_threads_free() -> None:
    with pytest.raises(Exception, match="WAIT_MAX_WAITERS"):
        load_settings({"WEB_THREADS": "16", "WAIT_MAX_WAITERS": "16"})
    assert load_settings({"WEB_THREADS": "16", "WAIT_MAX_WAITERS": "15"}).wait_max_waiters == 15


def test_reference_fetches_default_to_half_the_threads_waiters_leave() -> None:
    assert load_settings({}).reference_fetch_concurrency == 4  # (32 - 24) / 2
    assert load_settings({"WEB_THREADS": "8"}).reference_fetch_concurrency == 1


def test_reference_fetches_and_waiters_must_leave_a_thread_free() -> None:
    with pytest.raises(Exception, match="REFERENCE_FETCH_CONCURRENCY"):
        load_settings({"WEB_THREADS": "32", "REFERENCE_FETCH_CONCURRENCY": "8"})
    fetches = {"WEB_THREADS": "32", "WAIT_MAX_WAITERS": "20", "REFERENCE_FETCH_CONCURRENCY": "11"}
    assert load_settings(fetches).reference_fetch_concurrency == 11


def test_preview_listeners_are_counted_apart_from_the_threads() -> None:
    # They wait on the event loop (``app.listeners``), not on threads.
    assert load_settings({}).preview_max_listeners == 1000
    assert load_settings({"WEB_THREADS": "4"}).preview_max_listeners == 1000
    assert load_settings({"PREVIEW_MAX_LISTENERS": "0"}).preview_max_listeners == 0
    with pytest.raises(Exception, match="PREVIEW_MAX_LISTENERS"):
        load_settings({"PREVIEW_MAX_LISTENERS": "-1"})

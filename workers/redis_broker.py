"""The Redis broker: kombu's Redis transport, whose channels can still be closed after the
connection under them was collected.

When Redis goes away under a working worker, Celery's consumer first collects the broken
connection (which drops the transport's link to its ``Connection``), then closes it. Closing
the channel gives its unacknowledged messages back to Redis, and for that it builds a client
from the connection's address, which is gone by then: an ``AttributeError`` (``'NoneType'
object has no attribute 'hostname'``), which is no connection error, so the worker exits
instead of reconnecting (Celery 5.7, kombu 5.7, whenever a message was in flight: with late
acks and ETAs, nearly always). Here each channel remembers the parameters it connected with,
and uses them once its connection has been collected. The give-back then reaches Redis if it
is up again, or fails with a connection error, which Celery ignores there; either way the
worker reconnects. A message not given back is harmless: it returns after the visibility
timeout, and a job's lease, not its message, decides who works on it.
"""

from __future__ import annotations

from typing import Any

import redis as redis_py
from kombu.transport import redis


class Channel(redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connected_with: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # collected after the broker was lost
            known = self._connected_with.get(asynchronous)
            if known is None:
                raise redis_py.ConnectionError("the broker connection was closed")
            return dict(known)
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        self._connected_with[asynchronous] = dict(params)
        return params


class Transport(redis.Transport):
    Channel = Channel

"""The web server's lingering close, on a real socket pair and event loop."""

from __future__ import annotations

import asyncio
import socket

from app.webserver import LingeringClose
from tests.sockets import read_until_closed


def test_an_answer_written_after_the_close_began_is_dropped_not_raised() -> None:
    async def scenario() -> bytes:
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        lingering = LingeringClose(transport, loop, seconds=0.2)
        lingering.write(b"answer")
        lingering.close()  # FIN after the answer; the rest of an answer finished late is dropped
        lingering.write(b"late")
        assert lingering.is_closing()
        theirs.setblocking(False)
        received = await read_until_closed(theirs)
        lingering.forget()
        transport.close()
        theirs.close()
        return received

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == b"answer"

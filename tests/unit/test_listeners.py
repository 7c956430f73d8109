"""Early-audio listeners on a real event loop (``app.listeners``): the Flask app as the web
serves it (``app.webserver.asgi``), real Postgres and the real audio store. Flask's head, then
each new piece, then the rest from the durable copy, as one chunked answer; a listener's
place is freed when its client leaves or the server stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.db import Database
from app.listeners import Listeners
from app.sim.audio import wav_bytes
from app.storage import make_storage
from app.webserver import END_STREAM, Message, asgi
from config import Settings
from tests.conftest import auth
from tests.unit.jobs.support import end_streaming_job, store_pieces, streaming_job

pytestmark = pytest.mark.usefixtures("catalog")

SONG = wav_bytes(48_000, 16_000)  # three seconds, 96 kB
PIECES = [SONG[i : i + 20_000] for i in range(0, len(SONG), 20_000)]


class Client:
    """One request's side of the connection: what it was sent, and its leaving."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self.asked = False

    async def receive(self) -> Message:
        if not self.asked:
            self.asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def ended(self) -> bool:
        last = self.sent[-1] if self.sent else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }


def served(app: Any, settings: Settings) -> Listeners:
    ext = app.extensions["chorus"]
    return Listeners(asgi(app, settings), ext.previews, ext.storage, seconds=60)


def preview_path(client: Any, key: str, job_id: str) -> str:
    link: str = client.get(f"/v1/music/generations/{job_id}", headers=auth(key)).json[
        "audio_preview"
    ]
    return link.removeprefix("http://localhost")


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_listener_hears_the_head_then_each_piece_then_the_rest_of_the_copy(
    app: Any, client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    job_id = streaming_job(db, settings)
    path = preview_path(client, api_key, job_id)
    store_pieces(db, job_id, PIECES[:2])
    key, _ = make_storage(settings).store_bytes(SONG, job_id, max_bytes=len(SONG))
    server = served(app, settings)

    async def scenario() -> None:
        listener = Client()
        answer = asyncio.create_task(server(scope(path), listener.receive, listener.send))
        await until(lambda: listener.body == b"".join(PIECES[:2]))  # Flask's head
        start = listener.sent[0]
        assert start["status"] == 200
        names = [name for name, _ in start["headers"]]
        assert b"x-chorus-preview" not in names and b"content-length" not in names
        assert server.tail.listeners == 1
        store_pieces(db, job_id, [PIECES[2]], first=2)
        await until(lambda: listener.body == b"".join(PIECES[:3]))  # live, from the tail
        end_streaming_job(db, job_id, "SUCCEEDED", key)  # the rest only in the copy now
        await asyncio.wait_for(answer, 10)
        assert listener.body == SONG and listener.ended
        assert server.tail.listeners == 0

    run(scenario)


def test_a_listener_whose_client_leaves_or_whose_server_stops_frees_its_place(
    app: Any, client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    job_id = streaming_job(db, settings)
    path = preview_path(client, api_key, job_id)
    store_pieces(db, job_id, PIECES[:1])
    server = served(app, settings)

    async def scenario() -> None:
        leaving, staying = Client(), Client()
        stopped = scope(path)
        answers = [
            asyncio.create_task(server(scope(path), leaving.receive, leaving.send)),
            asyncio.create_task(server(stopped, staying.receive, staying.send)),
        ]
        await until(lambda: server.tail.listeners == 2 and END_STREAM in stopped)
        leaving.gone.set()
        await asyncio.wait_for(answers[0], 10)
        assert server.tail.listeners == 1
        stopped[END_STREAM]()  # what a graceful stop of the web process calls
        await asyncio.wait_for(answers[1], 10)
        assert server.tail.listeners == 0 and staying.ended
        assert staying.body == PIECES[0]  # its song was still being made

    run(scenario)

"""Test audio, and a real HTTP server that serves it, for the tests of storing audio
(``tests/unit/test_storage.py`` and ``tests/storage/``)."""

from __future__ import annotations

import io
import threading
import wave
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


def make_wav(seconds: float = 1.5, rate: int = 22050, channels: int = 2) -> bytes:
    frames = round(seconds * rate)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(
            bytes(range(256)) * (frames * channels * 2 // 256)
            + b"\0" * (frames * channels * 2 % 256)
        )
    return buffer.getvalue()


WAV = make_wav()
BIG_WAV = make_wav(seconds=4.0, rate=44100)


class Server:
    """A real HTTP server on 127.0.0.1 (werkzeug, in a thread) with a few canned routes."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.routes: dict[str, Callable[[], Response]] = {
            "/song.wav": lambda: Response(WAV, mimetype="audio/wav"),
            "/big.wav": lambda: Response(BIG_WAV, mimetype="audio/wav"),
            "/streamed.wav": lambda: Response(self.chunks(BIG_WAV), mimetype="audio/wav"),
            "/page.html": lambda: Response(
                "<html><body>Not audio</body></html>" * 50, mimetype="text/html"
            ),
            "/redirect": lambda: Response(status=302, headers={"Location": "/song.wav"}),
            "/503": lambda: Response("busy", status=503),
            "/502": lambda: Response("bad gateway", status=502),
            "/429": lambda: Response("slow down", status=429),
            "/404": lambda: Response("gone", status=404),
            "/403": lambda: Response("expired link", status=403),
        }
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def chunks(data: bytes) -> Iterable[bytes]:
        # No Content-Length: the size limit must hold while streaming, not from the header.
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.hits.append(request.path)
        route = self.routes.get(request.path)
        response = route() if route else Response("no such route", status=404)
        return response(environ, start_response)

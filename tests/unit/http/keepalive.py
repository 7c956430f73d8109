"""A scriptable HTTP/1.1 server on loopback that keeps connections open and counts them.

werkzeug's development server (and so pytest-httpserver) closes every connection, so it
cannot show whether a client reuses one. ``server.answer(path)`` gives (status, headers, body);
``server.connections`` counts the connections accepted; ``server.hang_up_after_answer`` closes
each one after its answer, unannounced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        status, headers, body = self.server.answer(self.path)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.hang_up_after_answer:  # type: ignore[attr-defined]
            self.close_connection = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def log_message(self, *args: Any) -> None:
        return None


@contextmanager
def keepalive_server(answer: Any) -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    httpd.daemon_threads = True
    httpd.connections = 0  # type: ignore[attr-defined]
    httpd.hang_up_after_answer = False  # type: ignore[attr-defined]
    httpd.answer = answer  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def url_of(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"

"""A Chorus app served over a real socket: in-process by a threaded server, for truly concurrent
requests, or as `chorus web` runs it (gunicorn), for what depends on the web server itself."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import requests
from werkzeug.serving import make_server

from config import load_settings

if TYPE_CHECKING:
    from tests.conftest import Processes


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free local port; yields its base URL. Stops the wait hub after."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        stop_hub(app)


def stop_hub(app: Any) -> None:
    """Stop the app's ``Prefer: wait`` listener thread, if a request started one."""
    hub = app.extensions["chorus"]._hub
    if hub is not None:
        hub.stop()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different free ports: each is held until all are chosen, since a port just
    released is the kernel's likely next pick."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def start_web(procs: Processes, **env: str) -> str:
    """The web process as `chorus web` runs it (two processes of sixteen threads unless
    ``env`` says otherwise) on a free port; its base URL once it answers /healthz."""
    from app.cli.processes import web_argv
    from tests.conftest import wait_for

    port = free_port()
    procs.env.update(
        {"WEB_CONCURRENCY": "2", "WEB_THREADS": "16", **env},
        PORT=str(port),
        WEB_HOST="127.0.0.1",
    )
    proc = procs.start("web", web_argv(load_settings(procs.env)))
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, procs.log("web")
        if f"Listening at: {base}" not in procs.log("web"):
            return False  # whatever answers on the port, it is not this server yet
        try:
            return requests.get(f"{base}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 120, interval=0.25, message="the web process to answer /healthz")
    return base

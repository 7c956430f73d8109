"""Running the simulator: under gunicorn for ``chorus sim``, or in a thread for tests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from werkzeug.serving import WSGIRequestHandler, make_server

from app.sim import create_sim_app
from config.logs import configure
from config.settings import Settings

log = logging.getLogger(__name__)


class _SimGunicorn(BaseApplication):
    """gunicorn driven from code, so ``chorus sim`` needs no config file or import string."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            # Settings newer than the installed gunicorn (the control socket is 25.1+) are skipped.
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn settings ``serve`` uses (a function so tests can check them)."""
    return {
        "bind": f"{settings.sim_host}:{settings.sim_port}",
        # ONE worker process: generations and the record live in that process's memory.
        "workers": 1,
        # gthread parks idle keep-alive connections in a poller instead of holding a thread, so
        # a few dozen threads serve thousands of client connections; threads are only tied up by
        # requests that really sleep: the hang faults, and every MiniMax call, which is held open
        # for its whole latency. SIM_THREADS therefore bounds how many MiniMax calls can be open
        # at once; calls beyond it wait in the accept queue.
        "worker_class": "gthread",
        "threads": settings.sim_threads,
        "worker_connections": 4096,
        "backlog": 4096,
        # Chorus's pooled HTTP clients reuse connections between polls several seconds apart.
        "keepalive": 75,
        # Hang faults sleep in request threads, not in the worker's main loop, so the heartbeat
        # keeps going; a generous timeout still avoids losing all state to a spurious restart.
        "timeout": 300,
        "graceful_timeout": 5,
        "accesslog": None,
        "errorlog": "-",
        "logger_class": "config.weblogs.SimGunicornLogger",
        "loglevel": settings.log_level.lower(),
        "proc_name": "chorus-sim",
        "preload_app": True,
        # gunicorn >= 25.1 otherwise opens ~/.gunicorn/gunicorn.ctl, a path shared with the web
        # server's gunicorn on the same machine; the simulator needs no runtime control.
        "control_socket_disable": True,
    }


def serve(settings: Settings) -> None:
    """Serve the simulator until interrupted (blocking); the ``chorus sim`` command."""
    configure(settings, "sim")
    app = create_sim_app(settings)
    log.info("simulator listening on %s:%s", settings.sim_host, settings.sim_port)
    _SimGunicorn(app, gunicorn_options(settings)).run()


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without its per-request access log line (tests would drown in it)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def start_background(
    settings: Settings, port: int = 0, host: str | None = None
) -> tuple[str, Callable[[], None]]:
    """Serve a fresh simulator app from a daemon thread; returns ``(base_url, shutdown)``.

    Port 0 (the default) lets the OS pick a free port, so parallel tests never collide.
    """
    app = create_sim_app(settings)
    bind_host = host or settings.sim_host
    server = make_server(bind_host, port, app, threaded=True, request_handler=_QuietHandler)
    # A short poll interval makes shutdown() return in milliseconds instead of half a second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="chorus-sim", daemon=True
    )
    thread.start()
    # A wildcard bind is reachable on loopback; IPv6 literals need brackets in a URL.
    url_host = "127.0.0.1" if bind_host in {"0.0.0.0", ""} else bind_host  # noqa: S104
    if ":" in url_host:
        url_host = f"[{url_host}]"
    base_url = f"http://{url_host}:{server.server_port}"

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return base_url, shutdown

"""A worker's own ``/metrics`` server, for hosts that share no ``METRICS_DIR`` with the web
process (docker-compose runs each process in a container of its own).

It runs in the worker's main process and serves the samples of that worker's folder (its
pool processes included), behind the same bearer token as the web's ``/metrics``. Where the
web process can read the worker's folder (one host), leave ``METRICS_PORT`` unset: the web's
``/metrics`` already sums it, and a second target would count it twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from app import metrics
from config import Settings

log = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass  # a scrape every few seconds is not news


def app(settings: Settings, folder: Path) -> Callable[..., Iterable[bytes]]:
    source = metrics.Folders(folder.parent, folder.name)

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status = metrics.authorized(environ.get("HTTP_AUTHORIZATION"), settings.metrics_token)
        if environ.get("PATH_INFO") != "/metrics":
            status = 404
        if status != 200:
            start_response(
                f"{status} {'Unauthorized' if status == 401 else 'Not Found'}",
                [
                    ("Content-Type", "text/plain"),
                    *([("WWW-Authenticate", "Bearer")] if status == 401 else []),
                ],
            )
            return [b""]
        body, content_type = metrics.render(source)
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    return serve


def start(settings: Settings) -> _Server | None:
    """Serve this worker's metrics on METRICS_PORT, if it is set and this process writes its
    samples to a folder; the server's thread dies with the process."""
    folder = os.environ.get(metrics.ENV)
    if settings.metrics_port is None or not settings.metrics_enabled or not folder:
        return None
    if not settings.metrics_token:
        log.warning("METRICS_PORT is set but METRICS_TOKEN is not: metrics are not served")
        return None
    try:
        server = make_server(
            settings.metrics_host,
            settings.metrics_port,
            app(settings, Path(folder)),
            server_class=_Server,
            handler_class=_Quiet,
        )
    except OSError:
        # The worker's work matters more than its metrics: it runs on without them.
        log.exception(
            "metrics: cannot listen on %s:%s", settings.metrics_host, settings.metrics_port
        )
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

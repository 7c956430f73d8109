"""The web process's metrics: every request counted and timed by its route, and ``/metrics``.

The hooks sit on Flask, not on the server, so they count the same under any WSGI server.
``/metrics`` is for Prometheus, not for clients (so it is not in the OpenAPI document): it
asks for ``METRICS_TOKEN`` as a bearer token and, with none configured, does not exist (404),
so it is never public by accident.
It sums every Chorus process's samples (``app.metrics``), and adds what the database says at
the moment of the scrape (``app.ops.collector``): one set of queries per scrape.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from app import metrics
from app.extensions import chorus
from app.ops.collector import DatabaseCollector
from config import Settings

# Any other method is counted under one name: a label must not take whatever a client sends.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests no route matched (404s, scanners): one label, whatever their path.
UNMATCHED = "unmatched"


def init_metrics(app: Flask, settings: Settings) -> None:
    if not settings.metrics_enabled:
        return
    metrics.WAIT_CAPACITY.set(settings.wait_max_waiters)
    app.before_request(_start)
    app.after_request(_count)
    if settings.metrics_token:
        app.add_url_rule("/metrics", "metrics", _scrape, methods=["GET"])


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    started = g.get("metrics_started")
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "OTHER"
    metrics.HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
    if started is not None:
        metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
    return response


def _scrape() -> Response:
    ext = chorus()
    status = metrics.authorized(request.headers.get("Authorization"), ext.settings.metrics_token)
    if status != 200:
        response = Response(status=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    root = metrics.bound_root(ext.settings.metrics_dir)
    body, content_type = metrics.render(root, DatabaseCollector(ext.db))
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

"""Each request's id: the caller's ``X-Request-Id`` when it is sane, else a fresh one.

It is on every line logged while the request is handled (``config.logs``), echoed on every
answer as ``X-Request-Id``, and it is the ``requestId`` of ``/v2``'s error bodies, so the id
a client quotes finds the request's lines. A caller's id is taken as it is only if it is 1 to
128 visible ASCII characters: anything else (too long, spaces, control characters, other
scripts) could forge or bloat log lines, and is replaced.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from config.logs import bind, unbind

HEADER = "X-Request-Id"
SANE = re.compile(r"[\x21-\x7e]{1,128}")


def request_id() -> str:
    """This request's id (chosen on first use, then kept for the request)."""
    chosen: str | None = g.get("request_id")
    if chosen is None:
        given = request.headers.get(HEADER, "")
        chosen = given if SANE.fullmatch(given) else str(uuid.uuid4())
        g.request_id = chosen
    return chosen


def init_request_id(app: Flask) -> None:
    """Register first, so that even a request refused by another ``before_request`` (a rate
    limit, say) has its id on its lines."""

    @app.before_request
    def _bind() -> None:
        g.request_log_token = bind(request_id=request_id())

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers[HEADER] = request_id()
        return response

    @app.teardown_request
    def _unbind(_: BaseException | None) -> None:
        token = g.pop("request_log_token", None)
        if token is not None:
            unbind(token)

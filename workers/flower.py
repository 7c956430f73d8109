"""``chorus flower``: Flower, with HTTP basic auth on every page.

Flower checks basic auth only in the handlers it marks as authenticated; ``/metrics`` and
``/healthcheck`` (and static files) answer anyone. Here Flower runs in this process, and
every route it serves is re-registered ahead of its own with a check in front, so nothing it
serves skips the credentials. The credentials come from FLOWER_BASIC_AUTH in the environment,
never from the command line, where any local user could read them (``ps``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from app.basic_auth import authorized, logins
from config import Settings
from config.logs import configure

log = logging.getLogger(__name__)

REALM = 'Basic realm="flower"'


def guarded(handler_class: Any, credentials: Sequence[str]) -> type:
    """A subclass of ``handler_class`` that answers 401 before anything else without them."""

    async def prepare(self: Any) -> None:
        if not authorized(self.request.headers.get("Authorization"), credentials):
            self.set_status(401)
            self.set_header("WWW-Authenticate", REALM)
            self.finish("Access denied")
            return
        result = handler_class.prepare(self)
        if result is not None:
            await result

    return type(f"Guarded{handler_class.__name__}", (handler_class,), {"prepare": prepare})


def guarded_handlers(handlers: Sequence[Any], credentials: Sequence[str]) -> list[Any]:
    from tornado.web import url

    rules: list[Any] = []
    for rule in handlers:
        if isinstance(rule, url):
            rules.append(
                url(
                    rule.regex.pattern,
                    guarded(rule.handler_class, credentials),
                    rule.kwargs,
                    rule.name,
                )
            )
        else:
            pattern, handler_class, *rest = rule
            rules.append((pattern, guarded(handler_class, credentials), *rest))
    return rules


def serve(settings: Settings, port: int) -> None:
    """Run Flower on ``port`` until SIGTERM or Ctrl-C, as ``celery flower`` would."""
    import atexit
    import contextlib
    import signal
    import sys

    from flower import command
    from flower.app import Flower, rewrite_handler
    from flower.options import options
    from flower.urls import handlers
    from flower.urls import settings as tornado_settings

    from workers.celery_app import celery

    if not settings.flower_basic_auth:
        raise ValueError("FLOWER_BASIC_AUTH is not set")
    # Flower's own FLOWER_* variables apply as they do under `celery flower`.
    command.apply_env_options()
    credentials = logins(settings.flower_basic_auth)
    options.basic_auth = credentials
    options.port = port
    # Bounded memory: Flower keeps tasks and offline workers in its process.
    options.max_tasks = 10_000
    options.purge_offline_workers = 300
    command.extract_settings()
    # Chorus's format for tornado's lines too, instead of Flower's own setup.
    configure(settings, "flower")

    app = Flower(capp=celery, options=options, **tornado_settings)
    rules = guarded_handlers(handlers, credentials)
    if options.url_prefix:
        rules = [rewrite_handler(rule, options.url_prefix) for rule in rules]
    # Rules added later are matched before the ones Flower registered in its constructor,
    # and the last of these is a catch-all, so Flower's unguarded ones are never reached.
    app.add_handlers(r".*", rules)

    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app.start_http_server()
    log.info("Flower on port %s, basic auth required on every page", port)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        app.start()

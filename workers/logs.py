"""A Celery worker's logging: Chorus's one setup (``config.logs``), not Celery's own.

Celery leaves logging alone when something answers its ``setup_logging`` signal; that also
turns off its redirection of stdout and stderr, which is done again here
(``worker_redirect_stdouts``), so a stray ``print`` in a task still becomes a log line. Task
lines carry the task's name and id (``config.logs.ContextFilter``). Without the banner
(``--quiet`` when the format is JSON), what it said is logged as one line when the worker
has set up. One line stays Celery's own text: "worker: Warm shutdown (MainProcess)", which
Celery prints straight to the process's original stdout when it is told to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, celeryd_init, setup_logging

from config.logs import configure
from config.topology import PROCESSES

log = logging.getLogger("chorus.worker")


def service_of(queues: Iterable[str]) -> str:
    """The topology's name of the worker that consumes ``queues`` (``worker``, ``worker_sync``,
    ``webhooks``): the ``service`` of its lines."""
    consumed = set(queues)
    return next((p.name for p in PROCESSES if p.queues and set(p.queues) == consumed), "worker")


def connect(app: Celery) -> None:
    service = ["worker"]

    @celeryd_init.connect(weak=False)
    def _early(options: dict[str, Any], **_: Any) -> None:
        service[0] = service_of(options.get("queues") or ())
        # Before the worker's first words (its warning about running as root, say), which
        # come before Celery sets up logging.
        configure(app.settings, service[0])  # type: ignore[attr-defined]

    @setup_logging.connect(weak=False)
    def _setup(**_: Any) -> None:
        configure(app.settings, service[0])  # type: ignore[attr-defined]
        if app.conf.worker_redirect_stdouts:
            app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)

    @celeryd_after_setup.connect(weak=False)
    def _started(sender: str, instance: Any, **_: Any) -> None:
        queues = sorted(q.name for q in instance.app.amqp.queues.consume_from.values())
        log.info(
            "worker %s starting",
            sender,
            extra={"hostname": sender, "queues": queues, "concurrency": instance.concurrency},
        )

"""The Celery side of Chorus: the workers that move jobs, and the scheduler that feeds them."""

from __future__ import annotations

import datetime as dt
import os
import signal
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import (
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.leasing import Received
from app.metrics import ENV
from app.wiring import writer
from config import Settings
from config.celery import celery_config
from workers import logs

# The tasks whose one argument is a list of claims, [job id, lease token].
JOB_TASKS = frozenset({"chorus.submit_jobs", "chorus.poll_jobs", "chorus.sync_submit_jobs"})


class ChorusCelery(Celery):
    """A Celery app that carries Chorus's settings and one job engine per process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("chorus", **kwargs)
        self.settings = settings
        self._engine: Engine | None = None
        self._received: Received | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            db = Database(self.settings)
            self._engine = Engine(
                self.settings,
                db,
                transitions=writer(db, self.settings),
                handoff=self._hand_to_sync_worker,
            )
        return self._engine

    @property
    def received(self) -> Received:
        """The claims of the job messages this worker has received (its main process)."""
        if self._received is None:
            lease = dt.timedelta(seconds=self.settings.lease_seconds)
            self._received = Received(Database(self.settings), lease)
        return self._received

    def _hand_to_sync_worker(self, job_id: str, token: str) -> None:
        self.send_task("chorus.sync_submit_jobs", args=([[job_id, token]],))

    def reset_after_fork(self) -> None:
        # A forked child must not reuse its parent's pooled database sockets.
        if self._engine is not None:
            self._engine.db.dispose()
        if self._received is not None:
            self._received.db.dispose()


def make_celery(settings: Settings) -> ChorusCelery:
    if settings.embedded:
        for folder in settings.celery_folders.values():
            folder.mkdir(parents=True, exist_ok=True)
    app = ChorusCelery(settings)
    app.config_from_object(celery_config(settings))
    # Chorus chose what a lost broker connection does to running steps (config/celery.py);
    # Celery's notice of its own future default would be logged at every reconnection.
    warnings.filterwarnings(
        "ignore", r"\s*In Celery 5\.1 we introduced", CPendingDeprecationWarning
    )
    app.conf.include = ["workers.tasks", "workers.webhooks"]
    app.set_default()
    logs.connect(app)

    @worker_process_init.connect(weak=False)
    def _after_fork(**_: Any) -> None:
        app.reset_after_fork()
        # honcho and Heroku stop a process by signalling its whole group. A pool process that
        # died of that SIGTERM would leave the main process waiting for it; instead the main
        # process alone shuts down, letting each pool process finish its task and exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    @worker_init.connect(weak=False)
    def _serve_metrics(**_: Any) -> None:
        from workers import metrics

        metrics.start(settings)

    @worker_process_shutdown.connect(weak=False)
    def _forget_live_gauges(**_: Any) -> None:
        # A pool process that ends takes its live gauges with it (prometheus_client).
        if os.environ.get(ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    @task_received.connect(weak=False)
    def _received(request: Any, **_: Any) -> None:
        # In the worker's main process, as a message arrives (before its ETA, before a pool
        # process is free): from now on its claims are renewed here, not left to the long
        # lease a queued message needs.
        if request.name in JOB_TASKS:
            app.received.add((job_id, token) for job_id, token in request.args[0])

    return app

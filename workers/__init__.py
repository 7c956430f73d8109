"""The Celery side of Chorus: the workers that move jobs, and the scheduler that feeds them."""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from app.db import Database
from app.jobs.engine import Engine
from app.metrics import ENV
from app.wiring import writer
from config import Settings
from config.celery import celery_config
from workers import logs


class ChorusCelery(Celery):
    """A Celery app that carries Chorus's settings and one job engine per process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("chorus", **kwargs)
        self.settings = settings
        self._engine: Engine | None = None

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

    def _hand_to_sync_worker(self, job_id: str, token: str) -> None:
        self.send_task("chorus.sync_submit_jobs", args=([[job_id, token]],))

    def reset_after_fork(self) -> None:
        # A forked child must not reuse its parent's pooled database sockets.
        if self._engine is not None:
            self._engine.db.dispose()


def make_celery(settings: Settings) -> ChorusCelery:
    if settings.embedded:
        for folder in settings.celery_folders.values():
            folder.mkdir(parents=True, exist_ok=True)
    app = ChorusCelery(settings)
    app.config_from_object(celery_config(settings))
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

    return app

"""A reader that a web process runs on its event loop for the answers it follows.

The live event streams (``app.jobs.tail``) and the early-audio listeners
(``app.jobs.preview_tail``) each have one per process: a task that reads the database for
everyone following, woken early by ``wake()``. It starts with its first follower, in the
process and loop that serve them: gunicorn forks its workers after the app is made, so a
task (and an ``asyncio.Event``) inherited from another process is never reused.
"""

from __future__ import annotations

import asyncio
import os


class LoopReader:
    """Starts ``_run`` on the running loop once per process; ``wake()`` cuts its wait short."""

    name = "loop-reader"

    def __init__(self) -> None:
        self._wake = asyncio.Event()  # bound to a loop only on first use
        self._task: asyncio.Task[None] | None = None
        self._pid: int | None = None

    def wake(self) -> None:
        self._wake.set()

    def _ensure_running(self) -> None:
        """Call on the loop, as a follower arrives."""
        if self._task is not None and not self._task.done() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        raise NotImplementedError

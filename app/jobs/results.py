"""A generation's result: its audio stored, then the job SUCCEEDED with it.

The audio is stored before the job's write, under a key of its own per attempt; a write
that loses (a cancel, or another holder, finished the job meanwhile) deletes its copy, so no
file is kept that no row points to.
"""

from __future__ import annotations

import logging
import secrets

from app.http.downloads import Downloads
from app.jobs.leasing import Leases
from app.jobs.logfields import about
from app.jobs.models import Job
from app.jobs.outcome import Outcome
from app.jobs.transitions import Finished, Transitions
from app.jobs.upstreams import Upstreams
from app.providers.base import PollResult
from app.storage import AudioError, AudioInfo, AudioStorage
from config import Settings

log = logging.getLogger(__name__)


class Results:
    def __init__(
        self,
        settings: Settings,
        storage: AudioStorage,
        transitions: Transitions,
        leases: Leases,
        upstreams: Upstreams,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.transitions = transitions
        self.leases = leases
        self.upstreams = upstreams
        self._downloads: Downloads | None = None

    def store(self, job: Job, result: PollResult) -> tuple[str, AudioInfo]:
        # A key of its own per attempt: a slow loser cleaning up its copy can never delete
        # the file the winner's row points to.
        stem = f"{job.id}-{secrets.token_hex(4)}"
        if result.audio_bytes is not None:
            return self.storage.store_bytes(
                result.audio_bytes, stem, max_bytes=self.settings.audio_max_bytes
            )
        if not result.audio_url:
            raise AudioError("the upstream reported success without audio", retryable=False)
        account = self.upstreams.job_account(job)
        return self.storage.fetch(
            result.audio_url,
            stem,
            max_bytes=self.settings.audio_max_bytes,
            timeout=(self.settings.upstream_connect_timeout, self.settings.upstream_read_timeout),
            downloads=self.downloads,
            # A link on the upstream's own API origin is as trusted as that API.
            trusted=account.base_url if account else None,
        )

    @property
    def downloads(self) -> Downloads:
        """One pooled client for audio downloads, per process: a fresh connection per finished
        job cost more than the download."""
        if self._downloads is None:
            self._downloads = Downloads(self.settings)
        return self._downloads

    def succeed(self, done: Finished) -> Outcome:
        """Record one job SUCCEEDED with its stored audio (settling its money in the same
        transaction); or, if a cancel took it meanwhile, drop our copy of the audio."""
        if not self.transitions.succeed(done):
            return self._lost(done)
        return Outcome.SUCCEEDED

    def succeed_many(self, finished: list[Finished]) -> dict[str, Outcome]:
        """``succeed`` for many jobs, in one statement. Returns each job's outcome."""
        if not finished:
            return {}
        try:
            written = self.transitions.succeed_many(finished)
        except Exception:
            # A deadlock with another many-row writer, say: each job on its own, then.
            log.warning("writing %d finished jobs at once failed", len(finished), exc_info=True)
            return {done.job.id: self._succeed_or_retry(done) for done in finished}
        return {
            done.job.id: Outcome.SUCCEEDED if done.job.id in written else self._lost(done)
            for done in finished
        }

    def _succeed_or_retry(self, done: Finished) -> Outcome:
        try:
            with about(done.job):
                return self.succeed(done)
        except Exception:
            # As the engine's step boundary: the job must not be stranded; the next poll finds
            # it done again and stores a fresh copy, so this one is dropped.
            log.exception("finishing job %s failed; it will be retried", done.job.id)
            self.storage.delete(done.key)
            self.leases.reschedule(done.job, delay=5.0)
            return Outcome.ERROR

    def _lost(self, done: Finished) -> Outcome:
        # Someone else finished or cancelled the job meanwhile; our copy is not referenced.
        self.storage.delete(done.key)
        return self.leases.hand_back(done.job, upstream_done=True)

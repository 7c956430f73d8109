"""Per-app services (settings, database, storage) and the request-scoped session."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app, g
from sqlalchemy.orm import Session

from app.cache import TTLCache
from app.db import Database, database_url
from app.doorbell import Doorbell, doorbell
from app.jobs.lyrics import LyricsWriter
from app.jobs.offers import Offer
from app.jobs.preview_tail import PreviewTail
from app.jobs.progress import ExpectedSeconds
from app.jobs.tail import EventTail
from app.jobs.transitions import Transitions
from app.jobs.waiting import WaitHub
from app.storage import AudioStorage
from app.wiring import writer
from config import Settings


@dataclass
class Chorus:
    settings: Settings
    db: Database
    storage: AudioStorage
    # Catalog answers, per process: a catalog load shows within a few seconds.
    offers: TTLCache[Offer | None] = field(default_factory=lambda: TTLCache(ttl=5.0))
    # Each org's count of queued + running jobs, per process, for the per-org cap.
    recent_active: TTLCache[int] = field(default_factory=lambda: TTLCache(ttl=1.0))
    _expected: ExpectedSeconds | None = field(default=None, repr=False)
    _hub: WaitHub | None = field(default=None, repr=False)
    _hub_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _transitions: Transitions | None = field(default=None, repr=False)
    _lyrics: LyricsWriter | None = field(default=None, repr=False)
    _events: EventTail | None = field(default=None, repr=False)
    _previews: PreviewTail | None = field(default=None, repr=False)

    @property
    def transitions(self) -> Transitions:
        """The writer of a job's status (a cancel), with every side effect: among them,
        telling every process's waiting requests that the job ended, and the scheduler (after
        the commit) that the job's event and its account slot wait for it."""
        if self._transitions is None:
            self._transitions = writer(self.db, self.settings, bell=self.doorbell)
        return self._transitions

    @property
    def lyrics(self) -> LyricsWriter:
        """The process's lyrics caller (its adapters, breaker and thread pool), made on first use."""
        with self._hub_lock:
            if self._lyrics is None:
                self._lyrics = LyricsWriter(self.settings, self.db)
            return self._lyrics

    @property
    def expected_seconds(self) -> ExpectedSeconds:
        """Each model's expected run time, per process: a running job's progress and eta."""
        if self._expected is None:
            self._expected = ExpectedSeconds(self.db.reader)
        return self._expected

    @property
    def waiters(self) -> WaitHub:
        """The process's ``Prefer: wait`` hub; its listener thread starts with the first waiter."""
        with self._hub_lock:
            if self._hub is None:
                self._hub = WaitHub(self.settings, self.db)
            return self._hub

    @property
    def events(self) -> EventTail:
        """The process's reader of stored job events for its live streams (``app.streams``
        follows them on the event loop; the tail starts with the first stream)."""
        if self._events is None:
            self._events = EventTail(self.settings, self.db, self.storage)
        return self._events

    @property
    def previews(self) -> PreviewTail:
        """The process's reader of early audio for its listeners (``app.listeners`` follows
        them on the event loop; the tail starts with the first listener)."""
        if self._previews is None:
            self._previews = PreviewTail(self.db)
        return self._previews

    @property
    def doorbell(self) -> Doorbell:
        """Rung after committing work the scheduler must hear of (a new job; a status change
        rings it through ``transitions``)."""
        return doorbell(database_url(self.settings))

    def session(self) -> Session:
        """The request's session, opened on first use and closed at teardown."""
        session: Session | None = g.get("db_session")
        if session is None:
            session = g.db_session = self.db.session()
        return session

    def commit(self) -> None:
        """Commit the request's session, if the request opened one."""
        session: Session | None = g.get("db_session")
        if session is not None:
            session.commit()


def chorus() -> Chorus:
    ext: Chorus = current_app.extensions["chorus"]
    return ext


def close_session(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()

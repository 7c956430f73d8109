"""Per-app services (settings, database, storage) and the request-scoped session."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app, g
from sqlalchemy.orm import Session

from app.cache import TTLCache
from app.db import Database
from app.jobs.service import Offer
from app.storage import AudioStorage
from config import Settings


@dataclass
class Chorus:
    settings: Settings
    db: Database
    storage: AudioStorage
    # Catalog answers, per process: a catalog load shows within a few seconds.
    offers: TTLCache[Offer | None] = field(default_factory=lambda: TTLCache(ttl=5.0))

    def session(self) -> Session:
        """The request's session, opened on first use and closed at teardown."""
        session: Session | None = g.get("db_session")
        if session is None:
            session = g.db_session = self.db.session()
        return session


def chorus() -> Chorus:
    ext: Chorus = current_app.extensions["chorus"]
    return ext


def close_session(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()

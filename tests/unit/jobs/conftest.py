"""Fixtures of the engine's tests; their plain helpers are in ``support.py``."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import Database
from app.jobs.engine import Engine
from config import Settings
from tests.unit.jobs.support import claim, new_job


@pytest.fixture
def leased_job(
    engine: Engine, db: Database, settings: Settings, catalog: dict[str, Any], api_key: str
) -> tuple[str, str]:
    """A new job leased by a sweep: its id and the token the sweep gave it."""
    job_id = new_job(db, settings)
    return job_id, claim(engine, job_id)

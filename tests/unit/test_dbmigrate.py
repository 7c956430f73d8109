"""The migrations build exactly the schema the models describe, and undo it cleanly."""

from __future__ import annotations

import os

from alembic import command

from app import dbmigrate
from config import load_settings
from tests.conftest import empty_database


def test_postgres_schema_matches_the_models(database_url: str) -> None:
    # The session database was built by running every migration from empty.
    command.check(dbmigrate.alembic_config(load_settings({"DATABASE_URL": database_url})))


def test_downgrade_to_empty_and_back() -> None:
    # A database of its own: the session's stays at head for the other tests.
    with empty_database(f"{os.getpid()}_downgrade") as url:
        settings = load_settings({"DATABASE_URL": url})
        dbmigrate.upgrade(settings)
        command.downgrade(dbmigrate.alembic_config(settings), "base")
        dbmigrate.upgrade(settings)
        command.check(dbmigrate.alembic_config(settings))

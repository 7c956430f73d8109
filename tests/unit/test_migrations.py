"""The migrations build exactly the schema the models describe, on Postgres and SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic import command

from app import dbmigrate
from config import load_settings


def test_postgres_schema_matches_the_models(database_url: str) -> None:
    # The session database was built by running every migration from empty.
    command.check(dbmigrate.alembic_config(load_settings({"DATABASE_URL": database_url})))


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    settings = load_settings({"CHORUS_VAR_DIR": str(tmp_path)})
    dbmigrate.upgrade(settings)
    command.check(dbmigrate.alembic_config(settings))
    assert (tmp_path / "chorus.db").exists()


def test_downgrade_to_empty_and_back(tmp_path: Path) -> None:
    settings = load_settings({"CHORUS_VAR_DIR": str(tmp_path)})
    dbmigrate.upgrade(settings)
    command.downgrade(dbmigrate.alembic_config(settings), "base")
    dbmigrate.upgrade(settings)
    command.check(dbmigrate.alembic_config(settings))

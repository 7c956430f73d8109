"""The migrations build exactly the schema the models describe, and undo it cleanly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import make_url

from app import dbmigrate
from config import load_settings


def test_postgres_schema_matches_the_models(database_url: str) -> None:
    # The session database was built by running every migration from empty.
    command.check(dbmigrate.alembic_config(load_settings({"DATABASE_URL": database_url})))


def test_downgrade_to_empty_and_back(database_url: str) -> None:
    # A database of its own: the session's stays at head for the other tests.
    base = make_url(database_url)
    url = base.set(database=f"{base.database}_downgrade")
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    try:
        settings = load_settings({"DATABASE_URL": url.render_as_string(hide_password=False)})
        dbmigrate.upgrade(settings)
        command.downgrade(dbmigrate.alembic_config(settings), "base")
        dbmigrate.upgrade(settings)
        command.check(dbmigrate.alembic_config(settings))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()

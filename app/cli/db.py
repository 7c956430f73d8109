"""``chorus db …``: the database schema."""

from __future__ import annotations

import click

from app.cli.context import database_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations (to the embedded PostgreSQL when DATABASE_URL is unset)."""
    from app import dbmigrate

    dbmigrate.upgrade(database_settings(ctx), revision)

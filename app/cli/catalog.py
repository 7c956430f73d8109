"""``chorus catalog …``: categories, models, routes and upstream accounts."""

from __future__ import annotations

from pathlib import Path

import click

from app.cli.context import database_settings


@click.group()
def catalog() -> None:
    """Categories, models, routes and upstream accounts."""


@catalog.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def catalog_load(ctx: click.Context, file: Path) -> None:
    """Load (upsert) a catalog YAML file."""
    from app.catalog import loader
    from app.db import Database

    try:
        data = loader.read(file)
        with Database(database_settings(ctx)).transaction() as session:
            counts = loader.load(session, data)
    except loader.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()), err=True)

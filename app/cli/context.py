"""What every ``chorus`` command shares: the settings, the database they point at, an org."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click

from config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The embedded default's org starts with ¥1,000 so the README's curl steps just work.
DEV_CURRENCY = "CNY"
DEV_CREDIT = 100_000

_HELD = "chorus.embedded"


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def database_settings(ctx: click.Context) -> Settings:
    """The settings, with a database URL: DATABASE_URL's, or else the embedded server's,
    which this process then holds (starting it if none runs) until the command ends."""
    settings = settings_of(ctx)
    if settings.database_url is not None:
        return settings
    held: Settings | None = ctx.meta.get(_HELD)
    if held is None:
        from app import embedded

        try:
            server = embedded.open_server(settings)
        except embedded.EmbeddedError as exc:
            raise click.ClickException(str(exc)) from exc
        ctx.find_root().call_on_close(server.close)
        held = dataclasses.replace(settings, database_url=server.url)
        # A fresh data folder has an empty database: bring it to the schema first (a no-op
        # once migrated), so that any command works on it.
        from app import dbmigrate

        dbmigrate.upgrade(held)
        ctx.meta[_HELD] = held
    return held


def org_id(session: Session, org_name: str, *, create: bool = False) -> int:
    """The id of the org named ``org_name`` (created if new with ``create``); a readable
    error when there is none."""
    from sqlalchemy import select

    from app.tenancy.keys import get_or_create_org
    from app.tenancy.models import Org

    if create:
        return get_or_create_org(session, org_name).id
    org = session.scalar(select(Org).where(Org.name == org_name))
    if org is None:
        raise click.ClickException(f"no org named {org_name!r}")
    return org.id

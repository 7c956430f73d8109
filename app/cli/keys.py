"""``chorus keys …``: API keys."""

from __future__ import annotations

import shlex

import click

from app.cli.context import database_settings, org_id


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--org", "org_name", required=True, help="Org name; created if new.")
@click.option("--label", default=None, help="Who or what the key is for.")
@click.pass_context
def keys_create(ctx: click.Context, org_name: str, label: str | None) -> None:
    """Create a key and print it (only it: it is shown this once)."""
    from sqlalchemy import func, select

    from app.db import Database
    from app.money.models import Balance
    from app.tenancy.keys import create_key

    with Database(database_settings(ctx)).transaction() as session:
        secret = create_key(session, org_name, label)
        org = org_id(session, org_name, create=True)
        credit = session.scalar(select(func.sum(Balance.available)).where(Balance.org_id == org))
    click.echo(secret)
    if not credit:
        # On stderr, so that stdout stays the key alone (KEY=$(chorus keys create …)).
        click.echo(
            f"The org {org_name!r} has no credit yet: its jobs on priced models get "
            f"429 insufficient_quota. Fund it with\n"
            f"  chorus balance add --org {shlex.quote(org_name)} AMOUNT\n"
            f"(AMOUNT in minor units: 100000 is ¥1,000)",
            err=True,
        )


@keys.command("list")
@click.option("--org", "org_name", required=True)
@click.pass_context
def keys_list(ctx: click.Context, org_name: str) -> None:
    """The org's keys: id, display prefix, label, created, revoked (never the secret)."""
    from sqlalchemy import select

    from app.db import Database
    from app.tenancy.models import ApiKey

    with Database(database_settings(ctx)).session() as session:
        owner = org_id(session, org_name)
        for key in session.scalars(
            select(ApiKey).where(ApiKey.org_id == owner).order_by(ApiKey.id)
        ):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            click.echo(
                f"{key.id}\t{key.display_prefix}…\t{key.label or '-'}\t"
                f"{key.created_at.isoformat()}\trevoked={revoked}"
            )


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: int) -> None:
    """Revoke a key by id (see `keys list`): it is refused from the next request on."""
    from app.db import Database, utcnow
    from app.tenancy.models import ApiKey

    with Database(database_settings(ctx)).transaction() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise click.ClickException(f"no key with id {key_id}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    click.echo(f"revoked key {key_id}", err=True)

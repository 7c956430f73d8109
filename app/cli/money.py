"""``chorus balance …`` and ``chorus usage``: tenants' money, in integer minor units."""

from __future__ import annotations

import datetime as dt

import click

from app.cli.context import DEV_CURRENCY, database_settings, org_id


@click.group()
def balance() -> None:
    """Tenants' money, in integer minor units."""


# ignore_unknown_options lets "-500" through as the AMOUNT, not as an option.
@balance.command("add", context_settings={"ignore_unknown_options": True})
@click.option("--org", "org_name", required=True)
@click.option("--currency", default=DEV_CURRENCY, show_default=True)
@click.option("--note", default=None)
@click.argument("amount", type=int)
@click.pass_context
def balance_add(
    ctx: click.Context, org_name: str, currency: str, note: str | None, amount: int
) -> None:
    """Credit AMOUNT minor units (negative: an adjustment down); prints the new balance."""
    from app.db import Database
    from app.money import ledger

    with Database(database_settings(ctx)).transaction() as session:
        org = org_id(session, org_name, create=True)
        kind = ledger.TOPUP if amount >= 0 else ledger.ADJUSTMENT
        # Under the balance row's lock: a submit's hold cannot slip in between check and write.
        ledger.lock_balance(session, org, currency.upper())
        if amount < 0 and ledger.balance(session, org, currency.upper()).available + amount < 0:
            raise click.ClickException("that adjustment would take the balance below zero")
        new = ledger.credit(session, org, currency.upper(), amount, note=note, kind=kind)
    click.echo(new)


@balance.command("show")
@click.option("--org", "org_name", required=True)
@click.option("--currency", default=DEV_CURRENCY, show_default=True)
@click.pass_context
def balance_show(ctx: click.Context, org_name: str, currency: str) -> None:
    """Print only the org's available balance, in minor units."""
    from app.db import Database
    from app.money import ledger

    with Database(database_settings(ctx)).session() as session:
        org = org_id(session, org_name)
        click.echo(ledger.balance(session, org, currency.upper()).available)


@click.command()
@click.option("--org", "org_name", required=True)
@click.option(
    "--from",
    "start",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="First day (UTC), default 30 days ago.",
)
@click.option(
    "--to",
    "end",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Last day (UTC), default today.",
)
@click.pass_context
def usage(
    ctx: click.Context, org_name: str, start: dt.datetime | None, end: dt.datetime | None
) -> None:
    """Jobs, seconds of audio and amount charged, by model and day."""
    from app.db import Database
    from app.jobs.usage import usage as report

    last = end.date() if end else dt.datetime.now(dt.UTC).date()
    first = start.date() if start else last - dt.timedelta(days=30)
    with Database(database_settings(ctx)).session() as session:
        rows = report(session, org_id(session, org_name), first, last)
    click.echo("date\tmodel\tjobs\tsucceeded\taudio_seconds\tamount\tcurrency")
    for row in rows:
        click.echo(
            "\t".join(
                str(row[k])
                for k in (
                    "date",
                    "model",
                    "jobs",
                    "succeeded",
                    "audio_seconds",
                    "amount",
                    "currency",
                )
            )
        )

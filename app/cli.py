"""The ``chorus`` command: operate Chorus and run its processes."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from app.webhooks.cli import webhooks
from config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The embedded default's org starts with ¥1,000 so the README's curl steps just work.
DEV_CURRENCY = "CNY"
DEV_CREDIT = 100_000


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Chorus, a music-generation job gateway."""
    ctx.obj = load_settings()


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


# ------------------------------------------------------------------ data


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations (creates the SQLite file of the embedded default)."""
    from app import dbmigrate

    dbmigrate.upgrade(settings_of(ctx), revision)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--org", "org_name", required=True, help="Org name; created if new.")
@click.option("--label", default=None, help="Who or what the key is for.")
@click.pass_context
def keys_create(ctx: click.Context, org_name: str, label: str | None) -> None:
    """Create a key and print it (only it: it is shown this once)."""
    from app.db import Database
    from app.tenancy.keys import create_key

    with Database(settings_of(ctx)).transaction() as session:
        secret = create_key(session, org_name, label)
    click.echo(secret)


@keys.command("list")
@click.option("--org", "org_name", required=True)
@click.pass_context
def keys_list(ctx: click.Context, org_name: str) -> None:
    """The org's keys: id, display prefix, label, created, revoked (never the secret)."""
    from sqlalchemy import select

    from app.db import Database
    from app.tenancy.models import ApiKey, Org

    with Database(settings_of(ctx)).session() as session:
        org = session.scalar(select(Org).where(Org.name == org_name))
        if org is None:
            raise click.ClickException(f"no org named {org_name!r}")
        for key in session.scalars(
            select(ApiKey).where(ApiKey.org_id == org.id).order_by(ApiKey.id)
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

    with Database(settings_of(ctx)).transaction() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise click.ClickException(f"no key with id {key_id}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    click.echo(f"revoked key {key_id}", err=True)


@main.group()
def balance() -> None:
    """Tenants' money, in integer minor units."""


def _org_id(session: Session, org_name: str, *, create: bool) -> int:
    from sqlalchemy import select

    from app.tenancy.keys import get_or_create_org
    from app.tenancy.models import Org

    if create:
        return get_or_create_org(session, org_name).id
    org = session.scalar(select(Org).where(Org.name == org_name))
    if org is None:
        raise click.ClickException(f"no org named {org_name!r}")
    return org.id


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

    with Database(settings_of(ctx)).transaction() as session:
        org_id = _org_id(session, org_name, create=True)
        kind = ledger.TOPUP if amount >= 0 else ledger.ADJUSTMENT
        # Under the balance row's lock: a submit's hold cannot slip in between check and write.
        ledger.lock_balance(session, org_id, currency.upper())
        if amount < 0 and ledger.balance(session, org_id, currency.upper()).available + amount < 0:
            raise click.ClickException("that adjustment would take the balance below zero")
        new = ledger.credit(session, org_id, currency.upper(), amount, note=note, kind=kind)
    click.echo(new)


@balance.command("show")
@click.option("--org", "org_name", required=True)
@click.option("--currency", default=DEV_CURRENCY, show_default=True)
@click.pass_context
def balance_show(ctx: click.Context, org_name: str, currency: str) -> None:
    """Print only the org's available balance, in minor units."""
    from app.db import Database
    from app.money import ledger

    with Database(settings_of(ctx)).session() as session:
        org_id = _org_id(session, org_name, create=False)
        click.echo(ledger.balance(session, org_id, currency.upper()).available)


@main.command()
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
    from app.money.usage import usage as report

    last = end.date() if end else dt.datetime.now(dt.UTC).date()
    first = start.date() if start else last - dt.timedelta(days=30)
    with Database(settings_of(ctx)).session() as session:
        rows = report(session, _org_id(session, org_name, create=False), first, last)
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


@main.group()
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
        with Database(settings_of(ctx)).transaction() as session:
            counts = loader.load(session, data)
    except loader.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()), err=True)


main.add_command(webhooks)


# ------------------------------------------------------------------ processes


def _exec(argv: list[str]) -> None:
    # Replace this process so signals (Ctrl-C, SIGTERM from a supervisor) reach the server.
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - fixed argv of our own entry points


def web_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(settings.web_workers),
        "--threads",
        str(settings.web_threads),
        "--bind",
        f"{settings.web_host}:{settings.web_port}",
        "--access-logfile",
        "-",
        "app.wsgi:app",
    ]


def _celery(*args: str) -> list[str]:
    """A Celery command line for Chorus's app."""
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]


def worker_argv(settings: Settings, *, sync: bool = False, webhooks: bool = False) -> list[str]:
    from config.celery import QUEUES, SYNC_QUEUE, WEBHOOKS_QUEUE

    if sync:
        # Threads, not processes: each held-open upstream call is a thread waiting on a socket.
        return _celery(
            "worker", "-E", "-Q", SYNC_QUEUE, "--pool", "threads",
            "--concurrency", str(settings.sync_concurrency),
            "--hostname", "sync@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    if webhooks:
        # Its tasks hand claims to each process's delivery threads and return at once.
        return _celery(
            "worker", "-E", "-Q", WEBHOOKS_QUEUE,
            "--concurrency", str(settings.worker_concurrency),
            "--hostname", "webhooks@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    return _celery(
        "worker", "-E", "-Q", ",".join(QUEUES),
        "--concurrency", str(settings.worker_concurrency), "--loglevel", settings.log_level,
    )  # fmt: skip


def scheduler_argv(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "app.cli", "scheduler"]


@main.command()
@click.pass_context
def web(ctx: click.Context) -> None:
    """The API under gunicorn (PORT, WEB_CONCURRENCY, WEB_THREADS)."""
    _exec(web_argv(settings_of(ctx)))


@main.command()
@click.option(
    "--sync",
    is_flag=True,
    help="Serve the queue of synchronous upstream calls (MiniMax) with a thread pool.",
)
@click.option("--webhooks", is_flag=True, help="Serve the queue of webhook deliveries.")
@click.pass_context
def worker(ctx: click.Context, sync: bool, webhooks: bool) -> None:
    """A Celery worker for the submit and poll queues (--sync: the sync queue; --webhooks:
    the webhook deliveries)."""
    if sync and webhooks:
        raise click.UsageError("--sync and --webhooks are separate workers: give one")
    _exec(worker_argv(settings_of(ctx), sync=sync, webhooks=webhooks))


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Hands due jobs, webhook deliveries and maintenance to the workers. One leads at a
    time (the others stand by and take over when it stops)."""
    from workers.scheduler import run

    run(settings_of(ctx))


@main.command()
@click.pass_context
def sim(ctx: click.Context) -> None:
    """The upstream simulator (SIM_HOST, SIM_PORT, SIM_LATENCY, SIM_JITTER)."""
    from app.sim.server import serve

    serve(settings_of(ctx))


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.pass_context
def flower(ctx: click.Context, port: int) -> None:
    """Flower, behind HTTP basic auth (FLOWER_BASIC_AUTH=user:password)."""
    settings = settings_of(ctx)
    if not settings.flower_basic_auth:
        # Flower can run tasks and shows their arguments: never without credentials.
        raise click.ClickException("set FLOWER_BASIC_AUTH=user:password first")
    _exec(
        _celery(
            "flower",
            f"--port={port}",
            f"--basic-auth={settings.flower_basic_auth}",
            "--max-tasks=10000",
            "--purge_offline_workers=300",
        )
    )


@main.command()
@click.option("--org", "org_name", default="dev", show_default=True)
@click.pass_context
def dev(ctx: click.Context, org_name: str) -> None:
    """Everything at once on the embedded default: migrate, load the catalog, print a key,
    then run web, the workers, the scheduler and the simulator until Ctrl-C."""
    from honcho.manager import Manager

    from app import dbmigrate
    from app.catalog import loader
    from app.db import Database
    from app.money import ledger
    from app.tenancy.keys import create_key, get_or_create_org

    settings = settings_of(ctx)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    dbmigrate.upgrade(settings)
    database = Database(settings)
    with database.transaction() as session:
        loader.load(session, loader.read(settings.catalog_file))
        key = create_key(session, org_name, label="chorus dev")
        org = get_or_create_org(session, org_name)
        if ledger.balance(session, org.id, DEV_CURRENCY).available < DEV_CREDIT // 10:
            ledger.credit(session, org.id, DEV_CURRENCY, DEV_CREDIT, note="chorus dev")
    database.engine.dispose()
    base = f"http://{settings.web_host}:{settings.web_port}"
    click.echo(
        f"\nChorus is starting on {base}\n  API key ({org_name}): {key}\n"
        f"  try: curl -s {base}/healthz\n"
    )

    chorus = shutil.which("chorus") or f"{sys.executable} -m app.cli"
    manager = Manager()
    env = dict(os.environ)
    commands = {
        "web": "web",
        "worker": "worker",
        "sync": "worker --sync",
        "webhooks": "worker --webhooks",
        "scheduler": "scheduler",
        "sim": "sim",
    }
    for name, command in commands.items():
        manager.add_process(name, f"{chorus} {command}", env=env)
    signal.signal(signal.SIGTERM, lambda *_: manager.terminate())
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()

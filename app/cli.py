"""The ``chorus`` command: operate Chorus and run its processes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shlex
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

# What honcho's manager returns when it was stopped by SIGINT or SIGTERM: a requested stop.
STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)
# Seconds chorus dev gives its processes to stop before it kills them (Ctrl-C must be
# done within 10 s, the embedded server's own stop included).
STOP_GRACE = 8
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


_HELD = "chorus.embedded"


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


# ------------------------------------------------------------------ data


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations (to the embedded PostgreSQL when DATABASE_URL is unset)."""
    from app import dbmigrate

    dbmigrate.upgrade(database_settings(ctx), revision)


@main.group()
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
    from app.tenancy.keys import create_key, get_or_create_org

    with Database(database_settings(ctx)).transaction() as session:
        secret = create_key(session, org_name, label)
        org_id = get_or_create_org(session, org_name).id
        credit = session.scalar(select(func.sum(Balance.available)).where(Balance.org_id == org_id))
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
    from app.tenancy.models import ApiKey, Org

    with Database(database_settings(ctx)).session() as session:
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

    with Database(database_settings(ctx)).transaction() as session:
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

    with Database(database_settings(ctx)).transaction() as session:
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

    with Database(database_settings(ctx)).session() as session:
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
    from app.jobs.usage import usage as report

    last = end.date() if end else dt.datetime.now(dt.UTC).date()
    first = start.date() if start else last - dt.timedelta(days=30)
    with Database(database_settings(ctx)).session() as session:
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
        with Database(database_settings(ctx)).transaction() as session:
            counts = loader.load(session, data)
    except loader.CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()), err=True)


main.add_command(webhooks)


# ------------------------------------------------------------------ processes


def _exec(ctx: click.Context, argv: list[str]) -> None:
    # Replace this process so signals (Ctrl-C, SIGTERM from a supervisor) reach the server.
    env = dict(os.environ)
    if settings_of(ctx).database_url is None:
        # Run alone with DATABASE_URL unset: join the embedded server `chorus dev` runs.
        from app import embedded

        try:
            url = embedded.running_url(settings_of(ctx))
        except embedded.EmbeddedError as exc:
            raise click.ClickException(str(exc)) from exc
        if url is None:
            raise click.ClickException(
                "DATABASE_URL is not set and the embedded PostgreSQL is not running: "
                "start `chorus dev` (it runs everything), or set DATABASE_URL"
            )
        env["DATABASE_URL"] = url
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # noqa: S606 - fixed argv of our own entry points


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
    """The worker's Celery command line; its queues are the topology's for that process."""
    from config.topology import BY_NAME

    if sync:
        # Threads, not processes: each held-open upstream call is a thread waiting on a socket.
        return _celery(
            "worker", "-E", "-Q", ",".join(BY_NAME["worker_sync"].queues), "--pool", "threads",
            "--concurrency", str(settings.sync_concurrency),
            "--hostname", "sync@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    if webhooks:
        # The tasks hand deliveries to each process's thread pool (WEBHOOK_CONCURRENCY).
        return _celery(
            "worker", "-E", "-Q", ",".join(BY_NAME["webhooks"].queues),
            "--concurrency", str(settings.worker_concurrency),
            "--hostname", "webhooks@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    return _celery(
        "worker", "-E", "-Q", ",".join(BY_NAME["worker"].queues),
        "--concurrency", str(settings.worker_concurrency), "--loglevel", settings.log_level,
    )  # fmt: skip


def scheduler_argv(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "app.cli", "scheduler"]


def require_public_url(settings: Settings, process: str) -> None:
    """Refuse to start a process that writes links without knowing Chorus's public address.

    The fallback (http://WEB_HOST:PORT) is the web process's own bind address, which is
    neither what clients reach behind a proxy nor, under honcho (PORT+100 per process), even
    the web port: links in webhook payloads would point nowhere.
    """
    from config.topology import BY_NAME

    if BY_NAME[process].builds_links and not settings.public_url_configured:
        raise click.ClickException(
            f"`chorus {' '.join(BY_NAME[process].args)}` writes links to Chorus into webhook "
            "payloads: set PUBLIC_URL to the address clients reach the API at "
            "(e.g. PUBLIC_URL=https://chorus.example.com)"
        )


@main.command()
@click.pass_context
def web(ctx: click.Context) -> None:
    """The API under gunicorn (PORT, WEB_CONCURRENCY, WEB_THREADS)."""
    _exec(ctx, web_argv(settings_of(ctx)))


@main.command()
@click.option(
    "--sync",
    is_flag=True,
    help="Serve the queue of synchronous upstream calls (MiniMax) with a thread pool.",
)
@click.option("--webhooks", is_flag=True, help="Deliver webhooks (needs PUBLIC_URL).")
@click.pass_context
def worker(ctx: click.Context, sync: bool, webhooks: bool) -> None:
    """A Celery worker: submits and polls jobs (--sync: MiniMax's held-open calls;
    --webhooks: webhook deliveries)."""
    if sync and webhooks:
        raise click.UsageError("--sync and --webhooks are different processes: pick one")
    settings = settings_of(ctx)
    if webhooks:
        require_public_url(settings, "webhooks")
    _exec(ctx, worker_argv(settings, sync=sync, webhooks=webhooks))


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Hands due jobs, webhook deliveries and maintenance to the workers. One leads at a
    time (the others stand by and take over when it stops)."""
    from workers.scheduler import run

    run(database_settings(ctx))


@main.command()
@click.pass_context
def release(ctx: click.Context) -> None:
    """One-shot, before the other processes start: migrate, then load CATALOG_FILE."""
    ctx.invoke(db_upgrade)
    ctx.invoke(catalog_load, file=settings_of(ctx).catalog_file)


@main.group()
def topology() -> None:
    """Chorus's processes (config/topology.py)."""


@topology.command("procfile")
def topology_procfile() -> None:
    """Print the Procfile (`chorus topology procfile > Procfile`)."""
    from config.topology import procfile

    click.echo(procfile(), nl=False)


@topology.command("list")
def topology_list() -> None:
    """Each process: its command, and the queues it consumes."""
    from config.topology import PROCESSES

    for process in PROCESSES:
        queues = ",".join(process.queues) or "-"
        click.echo(f"{process.name}\t{' '.join(process.argv)}\t{queues}\t{process.help}")


@topology.command("connections")
@click.pass_context
def topology_connections(ctx: click.Context) -> None:
    """The database connections each process can hold at these settings, and the
    max_connections PostgreSQL needs for one deployment."""
    from config.topology import database_connections, max_connections

    settings = settings_of(ctx)
    for name, count in database_connections(settings).items():
        click.echo(f"{name}\t{count}")
    click.echo(f"max_connections\t{max_connections(settings)}")


@main.command()
@click.pass_context
def sim(ctx: click.Context) -> None:
    """The upstream simulator (SIM_HOST, SIM_PORT, SIM_LATENCY, SIM_JITTER)."""
    from app.sim.server import serve

    serve(settings_of(ctx))


@main.command()
@click.option("--port", type=int, default=None, help="Default: FLOWER_PORT (5555).")
@click.pass_context
def flower(ctx: click.Context, port: int | None) -> None:
    """Flower, behind HTTP basic auth on every page (FLOWER_BASIC_AUTH=user:password)."""
    settings = settings_of(ctx)
    if not settings.flower_basic_auth:
        # Flower can run tasks and shows their arguments: never without credentials.
        raise click.ClickException("set FLOWER_BASIC_AUTH=user:password first")
    from workers.flower import serve

    serve(settings, port or settings.flower_port)


@main.command()
@click.option("--org", "org_name", default="dev", show_default=True)
@click.pass_context
def dev(ctx: click.Context, org_name: str) -> None:
    """Everything at once on the embedded default: migrate, load the catalog, print a key,
    then run every process of the topology but Flower until Ctrl-C."""
    import honcho.manager
    from honcho.manager import Manager

    from app import dbmigrate
    from app.catalog import loader
    from app.db import Database
    from app.money import ledger
    from app.tenancy.keys import create_key, get_or_create_org

    settings_of(ctx).var_dir.mkdir(parents=True, exist_ok=True)
    # With DATABASE_URL unset, the embedded PostgreSQL: started here, held until Chorus stops.
    settings = database_settings(ctx)
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
    where = "the embedded PostgreSQL" if settings_of(ctx).database_url is None else "DATABASE_URL"
    click.echo(
        f"\nChorus is starting on {base} (database: {where})\n"
        f"  API key ({org_name}): {key}\n"
        f"  try: curl -s {base}/healthz\n"
    )

    from config.topology import PROCESSES

    chorus = shutil.which("chorus") or f"{sys.executable} -m app.cli"
    manager = Manager()
    # The processes connect to the database this process resolved (the embedded server's),
    # and every child's links must point at this web process, whatever the children's own
    # settings would guess: both are said explicitly.
    env = {
        **os.environ,
        "DATABASE_URL": str(settings.database_url),
        "PUBLIC_URL": settings.public_url,
    }
    for process in PROCESSES:
        # release already ran above; Flower is for operating a cluster, and needs a password.
        if not process.one_shot and process.name != "flower":
            manager.add_process(process.name, f"{chorus} {' '.join(process.args)}", env=env)
    # Ctrl-C (SIGINT, sent by a terminal to this whole process group) and SIGTERM: honcho
    # passes SIGTERM to each process's own group and waits for them. The embedded server,
    # in a session of its own, is stopped after them, when this command's context closes.
    # A Celery worker on the filesystem broker takes up to about 6 s to finish its warm
    # shutdown, past honcho's 5 s before SIGKILL: it gets STOP_GRACE instead.
    honcho.manager.KILL_WAIT = STOP_GRACE
    manager.loop()
    if manager.returncode not in (None, 0, *STOP_CODES):
        # A process ended by itself (a crash, a port in use): honcho stopped the rest.
        ctx.exit(manager.returncode)


if __name__ == "__main__":
    main()

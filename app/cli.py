"""The ``chorus`` command: operate Chorus and run its processes."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import click

from config import Settings, load_settings


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


def worker_argv(settings: Settings, *, sync: bool = False) -> list[str]:
    from config.celery import QUEUES, SYNC_QUEUE

    if sync:
        # Threads, not processes: each held-open upstream call is a thread waiting on a socket.
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "-E",
            "-Q",
            SYNC_QUEUE,
            "--pool",
            "threads",
            "--concurrency",
            str(settings.sync_concurrency),
            "--hostname",
            "sync@%h",
            "--loglevel",
            settings.log_level,
        ]

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-E",
        "-Q",
        ",".join(QUEUES),
        "--concurrency",
        str(settings.worker_concurrency),
        "--loglevel",
        settings.log_level,
    ]


def beat_argv(settings: Settings) -> list[str]:
    schedule = settings.var_dir / "celerybeat-schedule"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        settings.log_level,
    ]


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
@click.pass_context
def worker(ctx: click.Context, sync: bool) -> None:
    """A Celery worker for the sweep, submit and poll queues (or, with --sync, the sync queue)."""
    _exec(worker_argv(settings_of(ctx), sync=sync))


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Celery beat: drives the sweeper. Run exactly one (a second is harmless, only wasteful)."""
    settings = settings_of(ctx)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _exec(beat_argv(settings))


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
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "flower",
            f"--port={port}",
            f"--basic-auth={settings.flower_basic_auth}",
            "--max-tasks=10000",
            "--purge_offline_workers=300",
        ]
    )


@main.command()
@click.option("--org", "org_name", default="dev", show_default=True)
@click.pass_context
def dev(ctx: click.Context, org_name: str) -> None:
    """Everything at once on the embedded default: migrate, load the catalog, print a key,
    then run web, worker, beat and the simulator until Ctrl-C."""
    from honcho.manager import Manager

    from app import dbmigrate
    from app.catalog import loader
    from app.db import Database
    from app.tenancy.keys import create_key

    settings = settings_of(ctx)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    dbmigrate.upgrade(settings)
    database = Database(settings)
    with database.transaction() as session:
        loader.load(session, loader.read(settings.catalog_file))
        key = create_key(session, org_name, label="chorus dev")
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
        "beat": "beat",
        "sim": "sim",
    }
    for name, command in commands.items():
        manager.add_process(name, f"{chorus} {command}", env=env)
    signal.signal(signal.SIGTERM, lambda *_: manager.terminate())
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()

"""``chorus web|worker|scheduler|release|topology|sim|flower|dev``: Chorus's processes."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

import click

from app.cli.catalog import catalog_load
from app.cli.context import DEV_CREDIT, DEV_CURRENCY, database_settings, settings_of
from app.cli.db import db_upgrade
from config import Settings
from config.settings import NO_SIGNING_KEY

# What honcho's manager returns when it was stopped by SIGINT or SIGTERM: a requested stop.
STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)
# Seconds chorus dev gives its processes to stop before it kills them (Ctrl-C must be
# done within 10 s, the embedded server's own stop included).
STOP_GRACE = 8


def _exec(ctx: click.Context, argv: list[str], process: str) -> None:
    # Replace this process so signals (Ctrl-C, SIGTERM from a supervisor) reach the server.
    env = dict(os.environ)
    _bind_metrics(settings_of(ctx), process, env)
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


def _bind_metrics(settings: Settings, process: str, env: dict[str, str] | None = None) -> None:
    """Give the process (the same pid once exec'd) its folder of samples under METRICS_DIR."""
    if settings.metrics_enabled:
        from app import metrics

        if env is None:
            metrics.bind_here(settings.metrics_dir, process)
        else:
            metrics.bind(settings.metrics_dir, process, env)


def web_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        # An event loop per process reads each request whole, then one of WEB_THREADS threads
        # runs it (app/webserver.py): a slow client holds a socket, not a thread.
        "--worker-class",
        "app.webserver.Worker",
        "--workers",
        str(settings.web_workers),
        "--bind",
        f"{settings.web_host}:{settings.web_port}",
        "--access-logfile",
        "-",
        # Its error and access lines in LOG_FORMAT, with the rest of Chorus's (config/logs.py).
        "--logger-class",
        "config.weblogs.GunicornLogger",
        "app.asgi:app",
    ]


def _celery(settings: Settings, *args: str) -> list[str]:
    """A Celery command line for Chorus's app."""
    # No banner with JSON logs: it is printed, not logged, so it would be the one line that
    # is not JSON; the worker logs what it says as a line of its own (workers.logs).
    quiet = ["--quiet"] if settings.log_format == "json" else []
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *quiet, *args]


def worker_argv(settings: Settings, *, sync: bool = False, webhooks: bool = False) -> list[str]:
    """The worker's Celery command line; its queues are the topology's for that process."""
    from config.topology import BY_NAME

    if sync:
        # Threads, not processes: each held-open upstream call is a thread waiting on a socket.
        return _celery(
            settings,
            "worker", "-E", "-Q", ",".join(BY_NAME["worker_sync"].queues), "--pool", "threads",
            "--concurrency", str(settings.sync_concurrency),
            "--hostname", "sync@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    if webhooks:
        # The tasks hand deliveries to each process's thread pool (WEBHOOK_CONCURRENCY).
        return _celery(
            settings,
            "worker", "-E", "-Q", ",".join(BY_NAME["webhooks"].queues),
            "--concurrency", str(settings.worker_concurrency),
            "--hostname", "webhooks@%h", "--loglevel", settings.log_level,
        )  # fmt: skip
    return _celery(
        settings,
        "worker", "-E", "-Q", ",".join(BY_NAME["worker"].queues),
        "--concurrency", str(settings.worker_concurrency), "--loglevel", settings.log_level,
    )  # fmt: skip


def scheduler_argv(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "app.cli", "scheduler"]


def local_secret_key(var_dir: Path) -> str:
    """The secret `chorus dev` signs with when SECRET_KEY is unset: made once, kept (readable
    by its owner only) in ``var_dir``, so audio links stay valid across restarts."""
    path = var_dir / "secret_key"
    try:
        # Exclusive create: of two first runs at once, one writes and the other reads its key.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(32))
    except FileExistsError:
        pass
    return path.read_text().strip()


def require_secret_key(settings: Settings) -> None:
    """Refuse to start a process that signs audio links without a secret of the operator's."""
    if not settings.secret_key:
        raise click.ClickException(NO_SIGNING_KEY)


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


@click.command()
@click.pass_context
def web(ctx: click.Context) -> None:
    """The API under gunicorn (PORT, WEB_CONCURRENCY, WEB_THREADS)."""
    settings = settings_of(ctx)
    require_secret_key(settings)
    _exec(ctx, web_argv(settings), "web")


@click.command()
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
        require_secret_key(settings)
        require_public_url(settings, "webhooks")
    name = "worker_sync" if sync else "webhooks" if webhooks else "worker"
    _exec(ctx, worker_argv(settings, sync=sync, webhooks=webhooks), name)


@click.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Hands due jobs, webhook deliveries and maintenance to the workers. One leads at a
    time (the others stand by and take over when it stops)."""
    _bind_metrics(settings_of(ctx), "scheduler")
    from workers.scheduler import run

    run(database_settings(ctx))


@click.command()
@click.pass_context
def release(ctx: click.Context) -> None:
    """One-shot, before the other processes start: migrate, load CATALOG_FILE, and empty
    METRICS_DIR (a deployment's counters start from zero)."""
    from app import metrics
    from config.logs import configure

    configure(settings_of(ctx), "release")
    metrics.reset(settings_of(ctx).metrics_dir)
    ctx.invoke(db_upgrade)
    ctx.invoke(catalog_load, file=settings_of(ctx).catalog_file)


@click.group()
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


@click.command()
@click.pass_context
def sim(ctx: click.Context) -> None:
    """The upstream simulator (SIM_HOST, SIM_PORT, SIM_LATENCY, SIM_JITTER)."""
    from app.sim.server import serve

    serve(settings_of(ctx))


@click.command()
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


@click.command()
@click.option("--org", "org_name", default="dev", show_default=True)
@click.pass_context
def dev(ctx: click.Context, org_name: str) -> None:
    """Everything at once on the embedded default: migrate, load the catalog, print a key,
    then run every process of the topology but Flower until Ctrl-C."""
    import honcho.manager
    from honcho.manager import Manager

    from app import dbmigrate, metrics
    from app.catalog import loader
    from app.db import Database
    from app.money import ledger
    from app.tenancy.keys import create_key, get_or_create_org

    settings_of(ctx).var_dir.mkdir(parents=True, exist_ok=True)
    metrics.reset(settings_of(ctx).metrics_dir)
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
        "SECRET_KEY": settings.secret_key or local_secret_key(settings.var_dir),
        # Read by people at a terminal, unless said otherwise.
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "plain"),
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

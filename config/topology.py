"""Chorus's processes: the one definition every shape follows.

The Procfile is generated from this (``chorus topology procfile``), docker-compose.yml runs a
service per process with the same command, ``chorus worker`` takes its queues from here, and
``tests/test_topology.py`` fails when any of them drifts. Every command is one of Chorus's
own entry points; its sizes (threads, concurrency, ports) come from settings, so each shape
is tuned by the same variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.celery import POLL_QUEUE, SUBMIT_QUEUE, SYNC_QUEUE, WEBHOOKS_QUEUE
from config.settings import Settings


@dataclass(frozen=True)
class Process:
    name: str
    # The arguments after ``chorus``.
    args: tuple[str, ...]
    help: str
    # Celery queues this process consumes.
    queues: tuple[str, ...] = ()
    # Runs to completion before the others start (migrations, catalog), instead of staying up.
    one_shot: bool = False
    # Writes links that leave Chorus without a request to take the host from (webhook
    # payloads): in the production shape it needs PUBLIC_URL.
    builds_links: bool = False
    # Settings this process needs other than the defaults when it runs on a host of its own:
    # servers listen beyond loopback.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return ["chorus", *self.args]

    @property
    def service(self) -> str:
        """Its service name in docker-compose.yml (Compose prefers hyphens)."""
        return self.name.replace("_", "-")


PROCESSES: tuple[Process, ...] = (
    Process(
        "web",
        ("web",),
        "the API under gunicorn (PORT, WEB_CONCURRENCY, WEB_THREADS)",
        env={"WEB_HOST": "0.0.0.0"},  # noqa: S104 - a server, reached from outside its host
    ),
    Process(
        "release",
        ("release",),
        "migrate the database and load the catalog (CATALOG_FILE), then exit",
        one_shot=True,
    ),
    Process(
        "worker",
        ("worker",),
        "submits jobs upstream and polls them (WORKER_CONCURRENCY, IO_THREADS)",
        queues=(SUBMIT_QUEUE, POLL_QUEUE),
    ),
    Process(
        "worker_sync",
        ("worker", "--sync"),
        "holds MiniMax's synchronous calls open, a thread each (SYNC_CONCURRENCY)",
        queues=(SYNC_QUEUE,),
    ),
    Process(
        "webhooks",
        ("worker", "--webhooks"),
        "delivers webhooks (WEBHOOK_CONCURRENCY); its payloads link to PUBLIC_URL",
        queues=(WEBHOOKS_QUEUE,),
        builds_links=True,
    ),
    Process(
        "scheduler",
        ("scheduler",),
        "sends due jobs, due deliveries and maintenance to the workers; one leads, others stand by",
    ),
    Process(
        "sim",
        ("sim",),
        "the upstream simulator the default catalog routes every model to (SIM_PORT)",
        env={"SIM_HOST": "0.0.0.0"},  # noqa: S104 - the workers reach it from other hosts
    ),
    Process(
        "flower",
        ("flower",),
        "the Celery dashboard behind basic auth (FLOWER_BASIC_AUTH, FLOWER_PORT)",
    ),
)

BY_NAME = {process.name: process for process in PROCESSES}

# Each process's SQLAlchemy pool: this many connections kept, this many more under load.
POOL_SIZE, POOL_OVERFLOW = 10, 40
# Room beside the processes for one-off commands (`chorus balance`, a migration, psql).
SPARE_CONNECTIONS = 50
# The web loop's own connections: ``app.jobs.tail.EventTail``'s reader and the doorbell it
# LISTENs on, and ``app.jobs.preview_tail.PreviewTail``'s reader.
LOOP_READERS = 3


def database_connections(settings: Settings) -> dict[str, int]:
    """The most connections each process can hold at its busiest: a thread that touches the
    database takes one from its process's pool, and each process keeps one more open to
    LISTEN or NOTIFY. PostgreSQL's max_connections must cover their sum (plus spare)."""

    def pool(threads: int) -> int:
        return min(threads, POOL_SIZE + POOL_OVERFLOW) + 1

    return {
        # Besides its threads, a web process's event loop reads for the answers it follows
        # (live events, early audio), one statement at a time per reader.
        "web": settings.web_workers * (pool(settings.web_threads) + LOOP_READERS),
        "worker": settings.worker_concurrency * pool(settings.io_threads),
        "worker_sync": pool(settings.sync_concurrency),
        "webhooks": settings.worker_concurrency * pool(settings.webhook_concurrency),
        # Its pool, the leader's lock and the doorbell it listens on.
        "scheduler": 3,
    }


def max_connections(settings: Settings) -> int:
    """The max_connections a PostgreSQL serving one such deployment needs."""
    return sum(database_connections(settings).values()) + SPARE_CONNECTIONS


def consumers() -> dict[str, list[str]]:
    """Each queue and the processes that consume it."""
    found: dict[str, list[str]] = {}
    for process in PROCESSES:
        for queue in process.queues:
            found.setdefault(queue, []).append(process.name)
    return found


PROCFILE_HEADER = """\
# Generated from config/topology.py by `chorus topology procfile > Procfile`; edit that, not
# this (tests/test_topology.py fails when they differ).
#
# `release` is one-shot (Heroku runs it before each deploy). Under honcho, name the
# long-running processes, since honcho stops them all as soon as one exits:
#   honcho start web worker worker_sync webhooks scheduler sim flower
# Every process reads its settings from the environment (honcho loads .env).
"""


def procfile() -> str:
    lines = [PROCFILE_HEADER]
    for process in PROCESSES:
        # ${VAR:-default}: the platform's value wins, else the one a server needs.
        prefix = "".join(f"{k}=${{{k}:-{v}}} " for k, v in process.env.items())
        lines.append(f"{process.name}: {prefix}exec {' '.join(process.argv)}\n")
    return "".join(lines)

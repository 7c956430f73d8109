"""The ``chorus`` command: operate Chorus and run its processes.

One module per command group; each keeps its heavy imports inside its commands, so that
``chorus --help`` stays fast and importing this package starts nothing.
"""

from __future__ import annotations

import click

from app.cli.catalog import catalog
from app.cli.db import db
from app.cli.keys import keys
from app.cli.money import balance, usage
from app.cli.ops import accounts, jobs, status
from app.cli.processes import dev, flower, release, scheduler, sim, topology, web, worker
from app.cli.webhooks import webhooks
from config import load_settings


@click.group(
    commands=[
        db,
        keys,
        balance,
        usage,
        catalog,
        webhooks,
        status,
        jobs,
        accounts,
        web,
        worker,
        scheduler,
        release,
        topology,
        sim,
        flower,
        dev,
    ]
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Chorus, a music-generation job gateway."""
    try:
        ctx.obj = load_settings()
    except ValueError as exc:  # a bad setting: say which, not a traceback
        raise click.ClickException(str(exc)) from exc

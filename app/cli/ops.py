"""``chorus status``, ``chorus jobs …`` and ``chorus accounts …``: what an operator on call
reads first, and the switches for an upstream that misbehaves. ``--json`` for scripts."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from app.cli.context import database_settings, settings_of

# Celery remote-control and broker calls wait this long at most: status must answer even
# when a part is down, and say so.
BROKER_TIMEOUT = 2


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------------------- status


def _broker_report(ctx: click.Context) -> dict[str, Any]:
    """Queue depths and the Celery workers that answer a ping; ``None`` where the broker
    could not be asked."""
    from config.celery import ALL_QUEUES
    from workers import make_celery

    celery = make_celery(settings_of(ctx))
    report: dict[str, Any] = {"queues": None, "workers": None}
    try:
        with celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
            report["queues"] = {q: _depth(conn.default_channel, q) for q in ALL_QUEUES}
        pongs = celery.control.ping(timeout=BROKER_TIMEOUT) or []
        report["workers"] = sorted(name for pong in pongs for name in pong)
    except Exception as exc:  # noqa: BLE001 - any broker fault is reported, not raised
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report


def _depth(channel: Any, queue: str) -> int:
    """Messages waiting in ``queue``: a passive declare reads the count without creating it,
    on Redis (kombu's virtual channel) and RabbitMQ alike."""
    from amqp.exceptions import ChannelError

    # On RabbitMQ a queue not found closes the channel; py-amqp opens it again at once, so
    # the next queue is asked on the same channel.
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    except ChannelError:  # never declared: no worker has consumed it yet, and nothing waits
        return 0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Processes alive, queue depths, due backlog, recent jobs, accounts, webhook backlog."""
    from app.db import Database
    from app.ops.status import snapshot
    from workers.scheduler import LOCK_KEY

    with Database(database_settings(ctx)).session() as session:
        data = snapshot(session, LOCK_KEY)
    data["broker"] = _broker_report(ctx)
    if as_json:
        _echo_json(data)
        return
    broker = data["broker"]
    workers = broker["workers"]
    click.echo(f"scheduler    {'leading' if data['scheduler_leading'] else 'NONE LEADING'}")
    click.echo(
        "workers      "
        + (f"{len(workers)} answering: {', '.join(workers)}" if workers else "NONE ANSWERING")
    )
    if broker["queues"] is not None:
        click.echo("queues       " + ", ".join(f"{q} {n}" for q, n in broker["queues"].items()))
    if "error" in broker:
        click.echo(f"broker       UNREACHABLE ({broker['error']})")
    due = data["due_backlog"]
    click.echo(f"due backlog  {due['jobs']} jobs, oldest {due['oldest_seconds']} s overdue")
    recent = ", ".join(f"{s} {n}" for s, n in data["jobs_last_hour"].items()) or "none"
    click.echo(f"last hour    {recent}")
    hooks = data["webhooks"]
    click.echo(
        f"webhooks     {hooks['pending']} pending ({hooks['overdue']} overdue), "
        f"{hooks['dead']} dead"
    )
    click.echo("accounts")
    _account_table(data["accounts"])


# ---------------------------------------------------------------------------------- jobs


@click.group()
def jobs() -> None:
    """Jobs across tenants: a filtered list, and one job's whole story."""


@jobs.command("list")
@click.option("--status", default=None, help="QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED.")
@click.option("--org", default=None, help="The org's name.")
@click.option("--model", default=None)
@click.option("--account", default=None, help="The upstream account's id.")
@click.option("--error", "error_code", default=None, help="An error code, e.g. upstream_timeout.")
@click.option("--since", type=click.DateTime(), default=None, help="Created at or after (UTC).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_list(ctx: click.Context, as_json: bool, since: dt.datetime | None, **filters: Any) -> None:
    """The newest jobs matching every filter given."""
    from app.db import Database
    from app.ops.jobs import LIST_COLUMNS, JobFilter, list_jobs

    where = JobFilter(since=since.replace(tzinfo=dt.UTC) if since else None, **filters)
    with Database(database_settings(ctx)).session() as session:
        rows = list_jobs(session, where)
    if as_json:
        _echo_json(rows)
    else:
        _table(rows, LIST_COLUMNS)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job: upstream ids, attempts, error, the money it moved and its webhook deliveries."""
    from app.db import Database
    from app.ops.jobs import story

    with Database(database_settings(ctx)).session() as session:
        told = story(session, job_id)
    if told is None:
        raise click.ClickException(f"no job {job_id!r}")
    if as_json:
        _echo_json(told.as_dict())
        return
    for name, value in told.job.items():
        if value is not None:
            click.echo(f"{name:<18} {value}")
    click.echo("money")
    for entry in told.money:
        click.echo(
            f"  {entry['at']}  {entry['kind']:<10} {entry['amount']:>10} {entry['currency']}"
        )
    click.echo("deliveries")
    for delivery in told.deliveries:
        click.echo(f"  {delivery['id']}  {delivery['event']}  {delivery['status']}")
        for attempt in delivery["attempts"]:
            answer = attempt["status_code"] or attempt["error"]
            click.echo(f"    #{attempt['attempt']} {attempt['at']}  {answer}")


# ---------------------------------------------------------------------------------- accounts

ACCOUNT_COLUMNS = ("id", "provider", "enabled", "in_flight", "max_in_flight", "breaker", "failures")


def _account_table(rows: list[dict[str, Any]]) -> None:
    _table(rows, ACCOUNT_COLUMNS)


@click.group()
def accounts() -> None:
    """Upstream accounts: in flight against their limit, breakers, and switches."""


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def accounts_list(ctx: click.Context, as_json: bool) -> None:
    """Every account with its jobs in flight, its limit and its breaker."""
    from app.db import Database
    from app.ops.accounts import list_accounts

    with Database(database_settings(ctx)).session() as session:
        rows = [view.as_dict() for view in list_accounts(session)]
    if as_json:
        _echo_json(rows)
    else:
        _account_table(rows)


def _switch(ctx: click.Context, account_id: str, action: str) -> None:
    from app.db import Database
    from app.ops import accounts as ops

    try:
        with Database(database_settings(ctx)).transaction() as session:
            if action == "reset":
                changed = ops.reset_breaker(session, account_id)
                click.echo(f"{account_id}: breaker closed" + ("" if changed else " (it was)"))
            else:
                ops.set_enabled(session, account_id, action == "enable")
                click.echo(f"{account_id}: {action}d")
    except ops.UnknownAccount:
        raise click.ClickException(f"no upstream account {account_id!r}") from None


@accounts.command("disable")
@click.argument("account_id")
@click.pass_context
def accounts_disable(ctx: click.Context, account_id: str) -> None:
    """Take no new jobs on ACCOUNT_ID (those it holds are followed to their end). Loading the
    catalog sets `enabled` from the file again."""
    _switch(ctx, account_id, "disable")


@accounts.command("enable")
@click.argument("account_id")
@click.pass_context
def accounts_enable(ctx: click.Context, account_id: str) -> None:
    """Let ACCOUNT_ID take new jobs again."""
    _switch(ctx, account_id, "enable")


@accounts.command("reset-breaker")
@click.argument("account_id")
@click.pass_context
def accounts_reset_breaker(ctx: click.Context, account_id: str) -> None:
    """Close ACCOUNT_ID's breaker now, its failure count back to zero."""
    _switch(ctx, account_id, "reset")

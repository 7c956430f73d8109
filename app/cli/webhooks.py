"""``chorus webhooks …``: an org's endpoint and secret, and a job's delivery log."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click
from sqlalchemy import select

from app.cli.context import database_settings, org_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.webhooks.models import WebhookEndpoint


def _endpoint(session: Session, org_name: str) -> WebhookEndpoint:
    """The org's endpoint, or a readable error when it has none."""
    from app.webhooks.models import WebhookEndpoint

    found = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id(session, org_name))
    )
    if found is None:
        raise click.ClickException(f"org {org_name!r} has no webhook endpoint")
    return found


@click.group()
def webhooks() -> None:
    """Webhooks: the org's default endpoint, its signing secret, and deliveries."""


@webhooks.group()
def endpoint() -> None:
    """The org's default endpoint (for jobs that name no callback_url)."""


@endpoint.command("set")
@click.option("--org", "org_name", required=True)
@click.option(
    "--event",
    "events",
    multiple=True,
    help="An event type to send (repeat it); default: every one.",
)
@click.argument("url")
@click.pass_context
def endpoint_set(ctx: click.Context, org_name: str, events: tuple[str, ...], url: str) -> None:
    """Set the endpoint to URL (checked as the API checks it); enables it again if disabled."""
    from app.db import Database
    from app.http import guard
    from app.jobs.events import EVENT_TYPES
    from app.webhooks import signing
    from app.webhooks.models import WebhookEndpoint

    settings = database_settings(ctx)
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise click.ClickException(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}"
        )
    try:
        guard.check(url, settings)
    except guard.RefusedURL as exc:
        raise click.ClickException(f"refused: {exc}") from exc
    with Database(settings).transaction() as session:
        owner = org_id(session, org_name)
        found = session.scalar(
            select(WebhookEndpoint).where(WebhookEndpoint.org_id == owner).with_for_update()
        )
        if found is None:
            found = WebhookEndpoint(org_id=owner, url=url)
            session.add(found)
        found.url, found.events = url, list(events) or None
        found.disabled_at = found.disabled_reason = None
        signing.current_secret(session, owner)
    click.echo(url)


@endpoint.command("show")
@click.option("--org", "org_name", required=True)
@click.pass_context
def endpoint_show(ctx: click.Context, org_name: str) -> None:
    """URL, events and state of the org's endpoint."""
    from app.db import Database
    from app.jobs.events import EVENT_TYPES

    with Database(database_settings(ctx)).session() as session:
        found = _endpoint(session, org_name)
        state = f"disabled ({found.disabled_reason})" if found.disabled_at else "enabled"
        click.echo(f"{found.url}\t{','.join(found.events or EVENT_TYPES)}\t{state}")


@endpoint.command("delete")
@click.option("--org", "org_name", required=True)
@click.pass_context
def endpoint_delete(ctx: click.Context, org_name: str) -> None:
    """Remove the org's endpoint; its deliveries still waiting are given up."""
    from app.db import Database
    from app.webhooks import outbox

    with Database(database_settings(ctx)).transaction() as session:
        found = _endpoint(session, org_name)
        outbox.remove_endpoint(session, found)
    click.echo("deleted", err=True)


@webhooks.group()
def secret() -> None:
    """The org's signing secret (whsec_…)."""


@secret.command("show")
@click.option("--org", "org_name", required=True)
@click.pass_context
def secret_show(ctx: click.Context, org_name: str) -> None:
    """Print the current secret (created on first use)."""
    from app.db import Database
    from app.webhooks import signing

    with Database(database_settings(ctx)).transaction() as session:
        key = signing.current_secret(session, org_id(session, org_name))
    click.echo(key)


@secret.command("rotate")
@click.option("--org", "org_name", required=True)
@click.pass_context
def secret_rotate(ctx: click.Context, org_name: str) -> None:
    """Print a new secret; the previous one keeps signing for WEBHOOK_SECRET_OVERLAP seconds."""
    from app.db import Database
    from app.webhooks import signing

    settings = database_settings(ctx)
    with Database(settings).transaction() as session:
        key, until = signing.rotate(
            session, org_id(session, org_name), settings.webhook_secret_overlap
        )
    click.echo(key)
    click.echo(f"the previous secret signs too until {until.isoformat()}", err=True)


def _when(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


@webhooks.command("deliveries")
@click.argument("job_id")
@click.pass_context
def deliveries(ctx: click.Context, job_id: str) -> None:
    """A job's deliveries and every attempt: time, status code, latency, error."""
    from app.db import Database
    from app.webhooks.models import WebhookAttempt, WebhookDelivery

    with Database(database_settings(ctx)).session() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        ).all()
        if not rows:
            raise click.ClickException(f"no deliveries for job {job_id!r}")
        for d in rows:
            click.echo(
                f"{d.id}\t{d.event_type}\t{d.status}\tattempts={d.attempt_count}\t"
                f"next={_when(d.next_attempt_at)}\t{d.url}"
            )
            for a in session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == d.id)
                .order_by(WebhookAttempt.id)
            ):
                code = a.status_code if a.status_code is not None else "-"
                manual = " (redeliver)" if a.manual else ""
                click.echo(
                    f"  #{a.attempt}{manual}\t{_when(a.started_at)}\t{code}\t"
                    f"{a.latency_ms} ms\t{a.error or ''}"
                )


@webhooks.command("redeliver")
@click.argument("delivery_id")
@click.pass_context
def redeliver_command(ctx: click.Context, delivery_id: str) -> None:
    """Send a delivery again (same webhook-id) as soon as a worker can."""
    from app.db import Database, database_url
    from app.doorbell import ring_now
    from app.webhooks.models import WebhookDelivery
    from app.webhooks.outbox import redeliver

    with Database(database_settings(ctx)).transaction() as session:
        found = session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
        )
        if found is None:
            raise click.ClickException(f"no delivery {delivery_id!r}")
        redeliver(found)
    ring_now(database_url(database_settings(ctx)))  # this process ends before a background ring
    click.echo(delivery_id)

"""Every table, imported in one place for Alembic and the tests."""

from app.catalog.models import AccountState, Category, Model, Route, UpstreamAccount
from app.db import Base
from app.idempotency.models import IdempotencyKey
from app.jobs.models import Job, LyricsGeneration
from app.jobs.previews import AudioPreview
from app.money.models import Balance, LedgerEntry
from app.tenancy.models import ApiKey, Org
from app.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookSecret

__all__ = [
    "AccountState",
    "ApiKey",
    "AudioPreview",
    "Balance",
    "Base",
    "Category",
    "IdempotencyKey",
    "Job",
    "LedgerEntry",
    "LyricsGeneration",
    "Model",
    "Org",
    "Route",
    "UpstreamAccount",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookSecret",
]

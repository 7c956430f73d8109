"""A Python client for Chorus, the music-generation job gateway (its ``/v1`` API)."""

from chorus_client.client import TERMINAL, Client, check_ended
from chorus_client.errors import (
    AuthenticationError,
    ChorusError,
    Conflict,
    InsufficientBalance,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFoundError,
    RateLimited,
    Unavailable,
    WaitTimeout,
    WebhookVerificationError,
)
from chorus_client.sse import Event, SSEParser
from chorus_client.webhooks import verify_webhook

__all__ = [
    "TERMINAL",
    "AuthenticationError",
    "ChorusError",
    "Client",
    "Conflict",
    "Event",
    "InsufficientBalance",
    "InvalidRequest",
    "JobCancelled",
    "JobFailed",
    "NotFoundError",
    "RateLimited",
    "SSEParser",
    "Unavailable",
    "WaitTimeout",
    "WebhookVerificationError",
    "check_ended",
    "verify_webhook",
]

"""Checking a Chorus webhook (Standard Webhooks, https://www.standardwebhooks.com).

Chorus signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 under the org's
``whsec_…`` secret and sends ``v1,<base64>`` in ``webhook-signature``, one per secret that
signs (two or three during a rotation, space-separated): one matching signature is enough.
The timestamp must be within five minutes of now, either way, so a captured delivery cannot
be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from chorus_client.errors import WebhookVerificationError

TOLERANCE_SECONDS = 5 * 60
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not one


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the secret is not a whsec_ base64 key") from exc


def _header(headers: Mapping[str, str], name: str) -> str:
    # Frameworks hand headers over in any case (WSGI environ aside, which callers convert).
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The event (``{"type", "timestamp", "data"}``) of a delivery whose signature checks out
    under ``secret``; else ``WebhookVerificationError``. ``payload`` must be the raw body, as
    received: a re-serialised JSON never matches."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    signed = f"{msg_id}.{sent_at}.".encode() + body
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            break
    else:
        raise WebhookVerificationError("no signature matches")
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event

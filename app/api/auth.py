"""Bearer-key authentication shared by the /v1 blueprints."""

from __future__ import annotations

from flask import g, request

from app.api.errors import ApiError
from app.extensions import chorus
from app.tenancy.keys import authenticate


def presented_key() -> str | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else None


def require_key() -> None:
    """``before_request`` of every /v1 blueprint: the caller's live key, or 403."""
    key = authenticate(chorus().session(), presented_key())
    if key is None:
        # The seed answers a missing or unknown key with 403 ("need login"). Revocation is
        # checked on every request, so a revoked key is refused at once.
        raise ApiError(
            403,
            "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    g.api_key = key

"""Callback URLs in the API: the SSRF policy's refusal (``app.http.guard``) as a 400.

A URL is checked when a job or endpoint names it, and again on every delivery attempt (the DNS
answer may have changed since). Redirects are never followed.
"""

from __future__ import annotations

from app.api.errors import ApiError
from app.http import guard
from config import Settings


def check_param(url: str, settings: Settings, param: str) -> None:
    """``guard.check`` for an API request: a 400 naming ``param``."""
    try:
        guard.check(url, settings)
    except guard.RefusedURL as exc:
        raise ApiError(
            400, f"Invalid value for '{param}': {exc}.", param=param, code="invalid_callback_url"
        ) from exc

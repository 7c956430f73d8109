"""HTTP basic auth against logins from the environment (Flower's and the ops console's).

A setting holds ``user:password`` logins, comma-separated. Every login is compared in
constant time, and with every entry, so the time taken says nothing about which one matched
or how much of it did.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence


def logins(setting: str | None) -> list[str]:
    """The ``user:password`` entries of a setting; none when it is unset or empty."""
    return [c for c in (setting or "").split(",") if c]


def login(header: str | None, credentials: Sequence[str]) -> str | None:
    """The user an ``Authorization`` header proves to be, by one of ``credentials``."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        given = base64.b64decode(token.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    matches = [hmac.compare_digest(given.encode(), c.encode()) for c in credentials]
    return given.partition(":")[0] if any(matches) else None


def authorized(header: str | None, credentials: Sequence[str]) -> bool:
    """True if an ``Authorization`` header carries one of ``credentials``."""
    return login(header, credentials) is not None

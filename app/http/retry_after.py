"""Reading a ``Retry-After`` header, from an upstream or a webhook receiver alike."""

from __future__ import annotations

import datetime as dt
import email.utils
import math

# The longest wait a header may ask for. Longer than any job's deadline and any step of the
# webhook schedule, and short enough that "now + wait" stays a datetime Python can hold.
MAX_SECONDS = 86_400.0


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when it says nothing usable.

    A date in the past or a negative number means "now" (0.0); a wait past ``MAX_SECONDS`` is
    cut to it.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _until(value, now or dt.datetime.now(dt.UTC))
    if seconds is None or math.isnan(seconds):
        return None
    return min(MAX_SECONDS, max(0.0, seconds))


def _until(value: str, now: dt.datetime) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=dt.UTC)
    return (when - now).total_seconds()

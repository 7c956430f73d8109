"""The client's deadline for a job: ``Cancel-After`` (Replicate's header) or ``cancel_after``.

The header takes a duration (``30s``, ``5m``, ``1h30m``, ``1.5s``) or plain seconds; the body
field takes whole seconds. Given both, the body field wins: it is the request's own word,
where a header may be a default an SDK adds to every call. The bounds (at least
``MIN_CANCEL_AFTER`` seconds, at most the job's own deadline) depend on the model and are
checked when the job is prepared (``app.jobs.intake``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.api.errors import ApiError
from app.jobs.intake import MIN_CANCEL_AFTER, ClientDeadline

HEADER = "Cancel-After"
FIELD = "cancel_after"
# Longer than any duration worth writing: a longer value is refused before any parsing.
MAX_HEADER_LENGTH = 32
# Hours, minutes, seconds, each at most once and in that order, as Go writes durations.
_DURATION = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6}(?:\.\d{1,3})?)s)?")
_SECONDS = re.compile(r"\d{1,9}(?:\.\d{1,3})?")


def parse_duration(raw: str) -> float | None:
    """Seconds in a ``Cancel-After`` value; None if it is not a duration."""
    value = raw.strip()
    if not value or len(value) > MAX_HEADER_LENGTH:
        return None
    if _SECONDS.fullmatch(value):
        return float(value)
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _invalid(param: str, detail: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid {param}: {detail} (at least {MIN_CANCEL_AFTER} seconds, at most the "
        "job's own deadline).",
        param=param,
        code="invalid_request",
    )


def requested(headers: Mapping[str, str] | Any, body: Any) -> ClientDeadline | None:
    """The deadline the request asks for, from its body field or else its header; None for
    neither. A malformed value is a 400 naming its field."""
    if body is not None:
        # JSON's true is an int to Python, and 30.0 is not whole seconds as asked.
        if isinstance(body, bool) or not isinstance(body, int):
            raise _invalid(FIELD, "expected an integer number of seconds")
        return ClientDeadline(float(body), FIELD)
    raw = headers.get(HEADER)
    if raw is None:
        return None
    seconds = parse_duration(raw)
    if seconds is None:
        raise _invalid(
            HEADER, f"'{raw[:MAX_HEADER_LENGTH]}' is not a duration like 30s, 5m or 1h30m"
        )
    return ClientDeadline(seconds, HEADER)

"""Typed errors, mapped from Chorus's error body ``{"error": {"message", "type", "param", "code"}}``.

Chorus answers an empty balance with 429 ``insufficient_quota`` (as OpenAI does), not 402:
both map to ``InsufficientBalance``, so callers never confuse it with a rate limit worth
retrying.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any


class ChorusError(Exception):
    """An error answer from Chorus (or a job that ended badly, for ``JobFailed``)."""

    def __init__(
        self,
        status: int | None,
        code: str | None,
        message: str,
        request_id: str | None = None,
        *,
        param: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.param = param
        self.body = body

    def __str__(self) -> str:
        parts = [str(self.status) if self.status is not None else None, self.code, self.message]
        text = ": ".join(p for p in parts if p)
        return f"{text} (request {self.request_id})" if self.request_id else text


class AuthenticationError(ChorusError):
    """401 or 403: no key, or an unknown or revoked one."""


class NotFoundError(ChorusError):
    """404: an unknown id, or another tenant's."""


class InsufficientBalance(ChorusError):
    """402, or 429 ``insufficient_quota``: the balance is too low for the model."""


class RateLimited(ChorusError):
    """429 for anything but the balance; ``retry_after`` is in seconds, when Chorus said."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class InvalidRequest(ChorusError):
    """400 or 422: the request itself is wrong; ``param`` names the field when Chorus did."""


class Conflict(ChorusError):
    """409: e.g. ``job_not_cancellable`` or ``audio_not_ready``."""


class Unavailable(ChorusError):
    """503 (after the client's own retries) or no connection at all."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class JobFailed(ChorusError):
    """A job waited for ended FAILED; ``code`` is the job's ``error.code``, ``job`` the job."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(
            None,
            error.get("code") or "failed",
            error.get("message") or f"job {job.get('id')} failed",
            body=job,
        )
        self.job = job


class JobCancelled(JobFailed):
    """A job waited for was cancelled (``code`` is ``cancelled``)."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__({**job, "error": {"code": "cancelled", "message": "job cancelled"}})
        self.job = job


class WaitTimeout(ChorusError):
    """The caller's wait ran out before the job ended; ``job`` is the job as last read."""

    def __init__(self, job: dict[str, Any], waited: float) -> None:
        super().__init__(
            None,
            "wait_timeout",
            f"job {job.get('id')} still {job.get('status')} after {waited:.0f} s",
            body=job,
        )
        self.job = job


class WebhookVerificationError(Exception):
    """A webhook whose signature, timestamp or headers do not check out."""


def retry_after(headers: Any) -> float | None:
    """``Retry-After`` in seconds (delta form; an HTTP date too), or None."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def from_response(response: Any) -> ChorusError:
    """The typed error for a ``requests`` response with a 4xx/5xx status."""
    status = response.status_code
    request_id = response.headers.get("X-Request-Id")
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message, param = error.get("code"), error.get("message"), error.get("param")
    elif isinstance(body, dict) and "message" in body:  # AIMLAPI's shape, /v2
        code, message, param = None, body.get("message"), None
    else:
        code, message, param = None, (response.text or "")[:500] or response.reason, None
    args = (status, code, str(message or response.reason or status), request_id)
    kwargs: dict[str, Any] = {"param": param, "body": body}
    if status == 402 or code == "insufficient_quota":
        return InsufficientBalance(*args, **kwargs)
    if status in (401, 403):
        return AuthenticationError(*args, **kwargs)
    if status == 404:
        return NotFoundError(*args, **kwargs)
    if status == 409:
        return Conflict(*args, **kwargs)
    if status in (400, 422):
        return InvalidRequest(*args, **kwargs)
    if status == 429:
        return RateLimited(*args, retry_after=retry_after(response.headers), **kwargs)
    if status == 503:
        return Unavailable(*args, retry_after=retry_after(response.headers), **kwargs)
    return ChorusError(*args, **kwargs)

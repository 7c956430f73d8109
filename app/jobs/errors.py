"""What a tenant is told when a job fails, and the refusals of a request about jobs.

A failure's details (an exception's text, an upstream's error page) can name Chorus's
upstream hosts, ports and internal addresses: they go to the log, with the job's id, and the
job carries a fixed sentence per error code. An upstream's own account of a failed generation
(its moderation or failure message) is the tenant's business and is kept as given.

A refused request (``Refused`` and its kinds) is an exception of the domain: it knows nothing
of HTTP. The API answers each kind with its own status and code, in one place
(``app.api.errors.from_domain``).
"""

from __future__ import annotations

import logging

log = logging.getLogger("app.jobs")

# A job still active when the client's own deadline (Cancel-After) passed.
CANCEL_AFTER_ELAPSED = "cancel_after_elapsed"

MESSAGES = {
    "upstream_unavailable": "The upstream service could not be reached.",
    "upstream_timeout": "The upstream service did not answer in time.",
    "upstream_rate_limited": "The upstream service refused the job: too many requests.",
    "upstream_auth_failed": "The upstream service refused Chorus's account.",
    "upstream_out_of_credits": "The upstream account is out of credits.",
    "upstream_invalid_response": "The upstream service answered with something unreadable.",
    "upstream_invalid_result": "The upstream's audio was missing, unreadable or too large.",
    "upstream_stream_incomplete": (
        "The upstream's audio stream broke off before the song was complete; it was not "
        "submitted again, so that it could not be billed twice."
    ),
    "upstream_unknown": (
        "The upstream may have received the job, but its answer was lost; it was not "
        "submitted again, so that it could not be made and billed twice."
    ),
    "invalid_request": "The upstream service rejected the request.",
    "content_moderated": "The upstream service refused the content.",
    "upstream_failed": "The upstream service reported a failed generation.",
    CANCEL_AFTER_ELAPSED: (
        "The job did not finish before the deadline the client set (Cancel-After); it was "
        "cancelled and nothing was charged."
    ),
}
FALLBACK = "The generation failed."


def public_message(job_id: str, code: str, detail: str) -> str:
    """The message the tenant sees for ``code``; ``detail`` is logged, never shown."""
    log.warning("job %s: %s: %s", job_id, code, detail)
    return MESSAGES.get(code, FALLBACK)


class Refused(Exception):
    """A request the rules turn down. ``message`` is said to the client as it is; ``param``
    names the field at fault, if one is."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ModelNotFound(Refused):
    def __init__(self, model: str, catelogid: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or is not published in catalog '{catelogid}'.",
            param="model",
        )


class MissingInput(Refused):
    """A field the model needs was not given."""


class LimitExceeded(Refused):
    """A field is outside the model's bounds."""


class BadDeadline(Refused):
    """The client's deadline (``Cancel-After``, ``cancel_after``) is out of bounds."""


class UnsupportedInput(Refused):
    """A field the model does not take was given."""


class BadReferenceAudio(Refused):
    """The reference track could not be fetched, or is not one the upstreams take."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid reference audio: {reason}.", param="reference_audio_url")
        self.reason = reason


class ReferenceFetchBusy(Refused):
    """This process is fetching as many reference tracks as it may (REFERENCE_FETCH_CONCURRENCY)."""

    def __init__(self) -> None:
        super().__init__(
            "Too many reference tracks are being fetched at the moment; retry shortly.",
            param="reference_audio_url",
        )


class InsufficientQuota(Refused):
    """The org's balance cannot hold the job's price."""

    def __init__(self) -> None:
        super().__init__(
            "You exceeded your current quota: the balance is too low for this model. Top up "
            "and try again."
        )


class TooManyActive(Refused):
    """The job would take the org over its cap of queued + running jobs."""

    def __init__(self, cap: int) -> None:
        super().__init__(
            f"Too many jobs in progress: at most {cap} may be queued or running "
            "at once. Wait for some to finish."
        )
        self.cap = cap


class JobNotFound(Refused):
    # Another tenant's job is as unknown as a job that never existed.
    def __init__(self, job_id: str) -> None:
        super().__init__(f"No music generation found with id '{job_id}'.", param="id")
        self.job_id = job_id


class NotCancellable(Refused):
    """The job already ended."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"Music generation '{job_id}' has already ended ({status}) and cannot be cancelled.",
            param="id",
        )
        self.job_id = job_id

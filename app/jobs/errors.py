"""What a tenant is told when a job fails.

A failure's details (an exception's text, an upstream's error page) can name Chorus's
upstream hosts, ports and internal addresses: they go to the log, with the job's id, and the
job carries a fixed sentence per error code. An upstream's own account of a failed generation
(its moderation or failure message) is the tenant's business and is kept as given.
"""

from __future__ import annotations

import logging

log = logging.getLogger("app.jobs")

MESSAGES = {
    "upstream_unavailable": "The upstream service could not be reached.",
    "upstream_timeout": "The upstream service did not answer in time.",
    "upstream_rate_limited": "The upstream service refused the job: too many requests.",
    "upstream_auth_failed": "The upstream service refused Chorus's account.",
    "upstream_out_of_credits": "The upstream account is out of credits.",
    "upstream_invalid_response": "The upstream service answered with something unreadable.",
    "upstream_invalid_result": "The upstream's audio was missing, unreadable or too large.",
    "upstream_unknown": (
        "The upstream may have received the job, but its answer was lost; it was not "
        "submitted again, so that it could not be made and billed twice."
    ),
    "invalid_request": "The upstream service rejected the request.",
    "content_moderated": "The upstream service refused the content.",
    "upstream_failed": "The upstream service reported a failed generation.",
}
FALLBACK = "The generation failed."


def public_message(job_id: str, code: str, detail: str) -> str:
    """The message the tenant sees for ``code``; ``detail`` is logged, never shown."""
    log.warning("job %s: %s: %s", job_id, code, detail)
    return MESSAGES.get(code, FALLBACK)

"""The events a job's status changes announce: their names belong to the lifecycle.

The webhook outbox writes one per change (``app.webhooks.outbox``) and the API validates a
job's ``webhook_events`` filter against the same list, so both read the names from here.
"""

from __future__ import annotations

from app.jobs.status import JobStatus

EVENT_PREFIX = "music.generation."
EVENTS: dict[JobStatus, str] = {
    JobStatus.RUNNING: EVENT_PREFIX + "running",
    JobStatus.SUCCEEDED: EVENT_PREFIX + "succeeded",
    JobStatus.FAILED: EVENT_PREFIX + "failed",
    JobStatus.CANCELLED: EVENT_PREFIX + "cancelled",
}
EVENT_TYPES = tuple(EVENTS.values())


def event_for(status: JobStatus | str) -> str | None:
    """The event a change to ``status`` announces; None for a state that announces nothing."""
    return EVENTS.get(JobStatus(status))

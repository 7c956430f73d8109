"""The job lifecycle, as one explicit state machine.

    QUEUED ──► RUNNING ──► SUCCEEDED
       │          ├──────► FAILED
       │          └──────► CANCELLED
       ├──────────────────► FAILED      (never accepted upstream, deadline, bad input)
       └──────────────────► CANCELLED

Terminal states never change again. Events arrive late, twice, or out of order (a duplicated
Celery message, a poll answer that lost a race), so the table is the guard of every write of
a status (``app.jobs.transitions``): a move it does not allow, a repeat, or anything after a
terminal state matches no row and changes nothing.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
# Ended states in which the upstream may still be making the job's song, followed until it
# ends (``upstream_followup``): a client's cancel, and a client's deadline passed (FAILED
# ``cancel_after_elapsed``). No other failure sets a follow-up.
FOLLOWED = frozenset({JobStatus.CANCELLED, JobStatus.FAILED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The states from which ``target`` may be entered: the guard of a conditional UPDATE."""
    return frozenset(s for s, allowed in TRANSITIONS.items() if target in allowed)

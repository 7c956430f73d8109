"""The job lifecycle, as one explicit state machine.

    QUEUED ──► RUNNING ──► SUCCEEDED
       │          ├──────► FAILED
       │          └──────► CANCELLED
       ├──────────────────► FAILED      (never accepted upstream, deadline, bad input)
       └──────────────────► CANCELLED

Terminal states never change again. Events arrive late, twice, or out of order (a duplicated
Celery message, a poll answer that lost a race): a repeat of the current state, or any event
for a terminal job, is a no-op rather than an error. Moving backwards is an error.
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

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a job cannot move from {current} to {target}")
        self.current = current
        self.target = target


def check(current: JobStatus, target: JobStatus) -> bool:
    """Whether moving ``current`` → ``target`` changes anything.

    Returns False for a no-op (a repeat, or anything after a terminal state) and raises
    InvalidTransition for a move the lifecycle forbids.
    """
    if current.terminal or current == target:
        return False
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)
    return True


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The states from which ``target`` may be entered: the guard of a conditional UPDATE."""
    return frozenset(s for s, allowed in TRANSITIONS.items() if target in allowed)

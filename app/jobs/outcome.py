"""What one step of the engine did for a job: the answer a worker logs and tests read."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    SKIPPED = "skipped"  # the claim's lease was gone: another holder has the job
    ERROR = "error"  # an unexpected fault: the lease is given back and the job looked at soon
    RUNNING = "running"  # submitted: the upstream is making the song
    HANDOFF = "handoff"  # sent to the sync worker, whose calls may stay open for minutes
    WAITING = "waiting"  # every account is full or broken: the job waits QUEUED
    RETRY = "retry"  # a passing fault: tried again after a backoff
    PENDING = "pending"  # the upstream is still working: looked at again later
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    FOLLOWING = "following"  # a cancelled job's upstream is still working
    CANCELLED = "cancelled"  # a cancelled job's upstream is no longer followed
    LOST = "lost"  # our write was refused: a cancel or a later claim took the job

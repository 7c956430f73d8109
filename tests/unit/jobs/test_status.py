"""The job state machine (app.jobs.status): every (current, target) pair, spelled out."""

from __future__ import annotations

import pytest

from app.jobs.status import ACTIVE, TERMINAL, TRANSITIONS, JobStatus, sources

Q, R, S, F, C = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)

CHANGE, NONE = "change", "-"

# The lifecycle written out by hand, independently of TRANSITIONS: rows are the current state,
# columns the target, in the order Q R S F C. Every write of a status is guarded by it
# (``app.jobs.transitions``): where it says NONE, the UPDATE matches no row.
TABLE: dict[JobStatus, dict[JobStatus, str]] = {
    Q: {Q: NONE, R: CHANGE, S: NONE, F: CHANGE, C: CHANGE},
    R: {Q: NONE, R: NONE, S: CHANGE, F: CHANGE, C: CHANGE},
    S: {Q: NONE, R: NONE, S: NONE, F: NONE, C: NONE},
    F: {Q: NONE, R: NONE, S: NONE, F: NONE, C: NONE},
    C: {Q: NONE, R: NONE, S: NONE, F: NONE, C: NONE},
}


def test_table_covers_every_state() -> None:
    assert set(TABLE) == set(JobStatus)
    assert all(set(row) == set(JobStatus) for row in TABLE.values())


@pytest.mark.parametrize("current", sorted(TERMINAL), ids=str)
def test_terminal_states_never_change(current: JobStatus) -> None:
    assert current.terminal
    assert TRANSITIONS[current] == frozenset()


def test_terminal_and_active_partition_the_states() -> None:
    assert {S, F, C} == TERMINAL
    assert {Q, R} == ACTIVE
    assert set(JobStatus) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert [s for s in JobStatus if s.terminal] == [S, F, C]


@pytest.mark.parametrize("target", list(JobStatus), ids=str)
def test_sources_match_the_table(target: JobStatus) -> None:
    from_table = frozenset(cur for cur in JobStatus if TABLE[cur][target] == CHANGE)
    assert sources(target) == from_table


def test_sources_spelled_out() -> None:
    # The guards of the engine's conditional UPDATEs.
    assert sources(Q) == frozenset()
    assert sources(R) == {Q}
    assert sources(S) == {R}
    assert sources(F) == {Q, R}
    assert sources(C) == {Q, R}
    # A terminal state is never a source: a finished job cannot be overwritten.
    assert all(not sources(t) & TERMINAL for t in JobStatus)


def test_statuses_are_their_stored_strings() -> None:
    assert [s.value for s in JobStatus] == ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
    assert JobStatus("RUNNING") is R

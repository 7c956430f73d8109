"""The job state machine (app.jobs.status): every (current, target) pair, spelled out."""

from __future__ import annotations

import itertools

import pytest

from app.jobs.status import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    JobStatus,
    check,
    sources,
)

Q, R, S, F, C = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)

CHANGE, NOOP, INVALID = "change", "no-op", "invalid"

# The lifecycle written out by hand, independently of TRANSITIONS: rows are the current state,
# columns the target, in the order Q R S F C.
TABLE: dict[JobStatus, dict[JobStatus, str]] = {
    Q: {Q: NOOP, R: CHANGE, S: INVALID, F: CHANGE, C: CHANGE},
    R: {Q: INVALID, R: NOOP, S: CHANGE, F: CHANGE, C: CHANGE},
    S: {Q: NOOP, R: NOOP, S: NOOP, F: NOOP, C: NOOP},
    F: {Q: NOOP, R: NOOP, S: NOOP, F: NOOP, C: NOOP},
    C: {Q: NOOP, R: NOOP, S: NOOP, F: NOOP, C: NOOP},
}

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


def test_table_covers_every_state() -> None:
    assert set(TABLE) == set(JobStatus)
    assert all(set(row) == set(JobStatus) for row in TABLE.values())
    assert len(ALL_PAIRS) == 25


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: str(s))
def test_check_follows_the_table(current: JobStatus, target: JobStatus) -> None:
    expected = TABLE[current][target]
    if expected == INVALID:
        with pytest.raises(InvalidTransition) as info:
            check(current, target)
        assert info.value.current is current
        assert info.value.target is target
        assert str(current) in str(info.value) and str(target) in str(info.value)
    else:
        assert check(current, target) is (expected == CHANGE)


@pytest.mark.parametrize("current", sorted(TERMINAL), ids=str)
def test_terminal_states_never_change(current: JobStatus) -> None:
    assert current.terminal
    assert TRANSITIONS[current] == frozenset()
    for target in JobStatus:
        assert check(current, target) is False


@pytest.mark.parametrize("state", list(JobStatus), ids=str)
def test_a_repeat_is_a_noop(state: JobStatus) -> None:
    assert check(state, state) is False


def test_moving_backwards_is_an_error() -> None:
    with pytest.raises(InvalidTransition):
        check(R, Q)


def test_success_needs_the_job_to_have_run() -> None:
    with pytest.raises(InvalidTransition):
        check(Q, S)


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

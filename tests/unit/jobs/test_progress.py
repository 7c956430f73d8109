"""The progress estimate (app.jobs.progress): the expected run time laid over the time running."""

from __future__ import annotations

import datetime as dt

import pytest

from app.jobs.progress import RUNNING_CAP, Estimate, estimate
from app.jobs.status import JobStatus

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_running_job_is_as_far_along_as_its_share_of_the_expected_time() -> None:
    assert estimate(JobStatus.RUNNING, T0, 60, at(15)) == Estimate(0.25, at(60))
    assert estimate(JobStatus.RUNNING, T0, 60, at(0)) == Estimate(0.0, at(60))


def test_a_late_job_stays_short_of_done_and_is_due_now() -> None:
    assert estimate(JobStatus.RUNNING, T0, 60, at(90)) == Estimate(RUNNING_CAP, at(90))


def test_a_clock_behind_the_start_counts_as_just_started() -> None:
    assert estimate(JobStatus.RUNNING, T0, 60, at(-3)).progress == 0.0


def test_only_a_succeeded_job_is_done() -> None:
    assert estimate(JobStatus.SUCCEEDED, T0, 60, at(5)) == Estimate(1.0, None)


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_other_states_say_nothing(status: JobStatus) -> None:
    assert estimate(status, T0, 60, at(30)) == Estimate(None, None)


@pytest.mark.parametrize("started_at, expected", [(None, 60), (T0, None), (T0, 0)])
def test_a_running_job_without_a_start_or_an_expected_time_says_nothing(
    started_at: dt.datetime | None, expected: float | None
) -> None:
    assert estimate(JobStatus.RUNNING, started_at, expected, at(30)) == Estimate(None, None)

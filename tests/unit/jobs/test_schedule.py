"""When to poll next (PollPolicy.next_delay) and how long to back off (backoff)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from app.jobs import schedule
from app.jobs.schedule import PollPolicy, backoff

ADAPTIVE = PollPolicy()
FIXED = PollPolicy(strategy="fixed", fixed_interval=10.0)


def poll_times(policy: PollPolicy, expected: float, spread: float, until: float) -> list[float]:
    """The moments a job submitted at 0 is polled, as the engine drives it.

    The engine asks for ``next_delay(0)`` right after the submit, then ``next_delay(elapsed)``
    after every pending answer.
    """
    times: list[float] = []
    t = 0.0
    while t <= until:
        t += policy.next_delay(t, expected, spread)
        times.append(t)
    return times


def step_of(policy: PollPolicy, spread: float) -> float:
    return policy.clamp(2 * spread / policy.steps_per_window)


# ------------------------------------------------------------------ fixed


@pytest.mark.parametrize("elapsed", [0.0, 3.0, 55.0, 600.0])
def test_fixed_strategy_returns_the_fixed_interval(elapsed: float) -> None:
    assert FIXED.next_delay(elapsed, 60, 10) == 10.0
    assert PollPolicy(strategy="fixed", fixed_interval=4.5).next_delay(elapsed, 1, 0) == 4.5


# ------------------------------------------------------------------ adaptive


@pytest.mark.parametrize(("expected", "spread"), [(60, 10), (60, 15), (2, 0.5), (120, 40)])
def test_no_poll_before_the_window_opens(expected: float, spread: float) -> None:
    step = step_of(ADAPTIVE, spread)
    start = expected - spread
    # From anywhere before the window, the next look is one step into it.
    for elapsed in (0.0, start / 3, start / 2, start - 0.25):
        delay = ADAPTIVE.next_delay(elapsed, expected, spread)
        assert elapsed + delay == pytest.approx(start + step)
        assert elapsed + delay > start
    assert poll_times(ADAPTIVE, expected, spread, until=0)[0] == pytest.approx(start + step)


def test_the_window_never_opens_before_zero() -> None:
    # expected − spread < 0: the window opens at submission.
    step = step_of(ADAPTIVE, 5)
    assert ADAPTIVE.next_delay(0.0, 2, 5) == pytest.approx(step)


@pytest.mark.parametrize(("expected", "spread"), [(60, 10), (60, 15), (2, 0.5), (120, 40), (30, 5)])
def test_inside_the_window_polls_are_one_step_apart_on_the_grid(
    expected: float, spread: float
) -> None:
    step = step_of(ADAPTIVE, spread)
    start, end = expected - spread, expected + spread
    times = [t for t in poll_times(ADAPTIVE, expected, spread, until=end) if t <= end + 1e-9]
    # steps_per_window steps, unless the step was clamped up to min_interval.
    assert len(times) == round((end - start) / step)
    assert len(times) == (ADAPTIVE.steps_per_window if spread >= 2.5 else 2)
    for k, t in enumerate(times, start=1):
        assert t == pytest.approx(start + k * step)
    assert times[-1] == pytest.approx(end)


def test_grid_survives_floating_point_steps() -> None:
    expected, spread = 3.3, 3.3  # window [0, 6.6], steps of 0.6 that float arithmetic blurs
    step = step_of(ADAPTIVE, spread)
    assert step == pytest.approx(0.6)
    times = [t for t in poll_times(ADAPTIVE, expected, spread, until=6.6) if t <= 6.6 + 1e-9]
    assert [round(t, 6) for t in times] == [round(0.6 * k, 6) for k in range(1, 12)]


def test_inside_the_window_an_off_grid_poll_returns_to_the_grid() -> None:
    # Window [50, 70]: a poll that ran late comes back to the next grid point 50 + k·step.
    step = step_of(ADAPTIVE, 10)
    for k in range(ADAPTIVE.steps_per_window):
        for late in (0.0, 0.3 * step, 0.7 * step):
            elapsed = 50 + k * step + late
            assert elapsed + ADAPTIVE.next_delay(elapsed, 60, 10) == pytest.approx(
                50 + (k + 1) * step
            )


def test_inside_the_window_the_delay_is_at_least_min_interval() -> None:
    # 0.1 s before a grid point, the delay is min_interval, not 0.1.
    point = 50 + 2 * step_of(ADAPTIVE, 10)
    assert ADAPTIVE.next_delay(point - 0.1, 60, 10) == pytest.approx(ADAPTIVE.min_interval)
    assert ADAPTIVE.next_delay(point - 0.01, 60, 10) == ADAPTIVE.min_interval


def test_overdue_jobs_back_off_geometrically_up_to_max_interval() -> None:
    expected, spread = 60.0, 10.0
    end, step = expected + spread, step_of(ADAPTIVE, spread)
    t, delays = end, []
    while t < end + 1000:
        d = ADAPTIVE.next_delay(t, expected, spread)
        delays.append(d)
        t += d
    assert delays == sorted(delays), "the back-off never shrinks"
    assert delays[0] == pytest.approx(step)
    assert max(delays) == ADAPTIVE.max_interval
    assert all(d <= ADAPTIVE.max_interval for d in delays)
    # Between step and the cap, each delay is half the overdue time: the overdue time grows
    # by a factor of 1.5 per poll.
    middle = [d for d in delays if step < d < ADAPTIVE.max_interval]
    assert len(middle) >= 3
    for a, b in itertools.pairwise(middle):
        assert b == pytest.approx(1.5 * a)


@pytest.mark.parametrize("max_interval", [5.0, 12.0, 30.0])
def test_overdue_delay_never_exceeds_max_interval(max_interval: float) -> None:
    policy = PollPolicy(max_interval=max_interval)
    for elapsed in (200.0, 1_000.0, 86_400.0):
        assert policy.next_delay(elapsed, 60, 10) == max_interval


@pytest.mark.parametrize(
    ("expected", "spread"),
    [
        (60, 10),
        (60, 0),
        (2, 0.5),
        (0.6, 0.2),
        (1, 0.01),
        (0, 0),
        (500, 300),
        (5, -3),
    ],
)
def test_adaptive_delay_is_never_below_min_interval(expected: float, spread: float) -> None:
    for i in range(0, 4000):
        elapsed = i * 0.173
        delay = ADAPTIVE.next_delay(elapsed, expected, spread)
        assert delay >= ADAPTIVE.min_interval, (elapsed, delay)
        assert math.isfinite(delay)


def test_zero_spread_polls_min_interval_after_expected() -> None:
    assert ADAPTIVE.next_delay(0, 10, 0) == pytest.approx(10 + ADAPTIVE.min_interval)
    assert ADAPTIVE.next_delay(10.5, 10, 0) == ADAPTIVE.min_interval


def test_the_step_is_clamped() -> None:
    # A huge window is crossed in max_interval steps; a tiny one in min_interval steps.
    assert ADAPTIVE.next_delay(0, 1000, 900) == pytest.approx(100 + ADAPTIVE.max_interval)
    assert ADAPTIVE.next_delay(0, 10, 0.1) == pytest.approx(9.9 + ADAPTIVE.min_interval)


# ------------------------------------------------------------------ adaptive vs fixed


def simulate(
    policy: PollPolicy, finish: float, expected: float, spread: float
) -> tuple[int, float]:
    """(polls until the job is seen finished, lag between finishing and being seen)."""
    polls, t = 0, 0.0
    while True:
        t += policy.next_delay(t, expected, spread)
        polls += 1
        if t >= finish:
            return polls, t - finish


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def test_adaptive_beats_a_fixed_ten_second_poll() -> None:
    rng = random.Random(20260821)
    finishes = [rng.uniform(50, 70) for _ in range(4000)]
    runs = {
        name: [simulate(policy, t, 60, 10) for t in finishes]
        for name, policy in (("adaptive", ADAPTIVE), ("fixed", FIXED))
    }
    polls = {name: sum(p for p, _ in r) / len(r) for name, r in runs.items()}
    lags = {name: [lag for _, lag in r] for name, r in runs.items()}

    assert polls["adaptive"] <= polls["fixed"], polls
    for q in (0.5, 0.99):
        assert percentile(lags["adaptive"], q) <= percentile(lags["fixed"], q) / 4, (q, lags)
    # The lag of the adaptive policy is bounded by one step for a job in its window; the
    # schedule alone leaves a fifth of the fixed poll's p99, the rest of a quarter being what
    # the system has for everything else (sweep, queue, the call, the write).
    assert max(lags["adaptive"]) <= step_of(ADAPTIVE, 10) + 1e-9
    assert percentile(lags["adaptive"], 0.99) <= percentile(lags["fixed"], 0.99) / 5
    # Sanity of the baseline: a fixed 10 s poll lags ~5 s at p50 and ~10 s at p99.
    assert 4 <= percentile(lags["fixed"], 0.5) <= 6
    assert percentile(lags["fixed"], 0.99) >= 9


# ------------------------------------------------------------------ backoff


@pytest.fixture
def max_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full jitter pick the top of its range, so the bound itself is visible."""
    monkeypatch.setattr(schedule.random, "uniform", lambda a, b: b)


@pytest.mark.usefixtures("max_jitter")
def test_backoff_ceiling_grows_with_the_attempt_and_is_capped() -> None:
    ceilings = [backoff(n, base=2.0, cap=60.0) for n in range(1, 10)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert backoff(0) == backoff(1) == 2.0


def test_backoff_samples_stay_within_bounds_and_grow() -> None:
    random.seed(7)
    for attempt in range(1, 12):
        samples = [backoff(attempt, base=2.0, cap=60.0) for _ in range(300)]
        assert min(samples) >= 1.0  # never below base / 2
        assert max(samples) <= min(60.0, 2.0 * 2 ** (attempt - 1))
    means = [sum(backoff(a, base=1.0, cap=30.0) for _ in range(2000)) / 2000 for a in (1, 3, 5)]
    assert means[0] < means[1] < means[2]
    assert all(backoff(40, base=1.0, cap=30.0) <= 30.0 for _ in range(500))


@pytest.mark.parametrize("retry_after", [0.0, 7.0, 45.0, 300.0])
def test_backoff_is_never_sooner_than_retry_after(retry_after: float) -> None:
    random.seed(11)
    for attempt in (1, 2, 5, 10):
        for _ in range(200):
            assert backoff(attempt, retry_after=retry_after) >= retry_after
    # A Retry-After beyond the cap wins over the cap: the upstream said when.
    assert backoff(1, cap=60.0, retry_after=300.0) >= 300.0

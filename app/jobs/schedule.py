"""When to look at a job next.

A fixed poll interval wastes calls early and adds lag late. The catalog knows each model's
typical generation time (``expected`` ± ``spread``), so the poller sleeps through the part of
the window where the upstream cannot be done, then looks at a steady step across the likely
window, then backs off geometrically for a straggler.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    strategy: str = "adaptive"  # or "fixed"
    fixed_interval: float = 10.0
    min_interval: float = 0.5
    max_interval: float = 30.0
    # Steps across the likely window [expected − spread, expected + spread]: more steps, less
    # lag, more calls. A job finishing in the window waits up to one step (p99 ≈ a step) and
    # costs (steps + 1) / 2 calls on average: 11 steps put the lag's p99 under a fifth of a
    # fixed poll at the window's width (10 s for 60 ± 10) for about as many calls as that poll.
    steps_per_window: int = 11

    def clamp(self, seconds: float) -> float:
        return min(self.max_interval, max(self.min_interval, seconds))

    def next_delay(self, elapsed: float, expected: float, spread: float) -> float:
        """Seconds from now until the next poll of a job upstream for ``elapsed`` seconds."""
        if self.strategy == "fixed":
            return self.fixed_interval
        spread = max(spread, 0.0)
        start = max(0.0, expected - spread)
        end = expected + spread
        step = self.clamp(2 * spread / self.steps_per_window)
        if elapsed < start:
            # Nothing can be ready before the window opens: the first look is one step into it.
            return start + step - elapsed
        if elapsed < end:
            # Stay on the grid start + k·step so lag stays below one step.
            # The epsilon keeps a grid point computed as 1.7999999999999998 on the grid.
            done = math.floor((elapsed - start) / step + 1e-9) + 1
            return max(self.min_interval, start + done * step - elapsed)
        return self.clamp(max(step, (elapsed - end) / 2))


def backoff(
    attempt: int, *, base: float = 2.0, cap: float = 60.0, retry_after: float | None = None
) -> float:
    """Exponential backoff with full jitter; never sooner than the upstream's Retry-After."""
    delay = random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))  # noqa: S311 - jitter, not crypto
    delay = max(delay, base / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay

"""The benchmark's phases, in the order they run and are reported.

Each module holds one phase's options, its run, its verdicts and its section of the report;
the measuring itself is in the module of the same topic one level up (``bench/jobs.py`` and
so on).
"""

from bench.phases import (
    events,
    jobs,
    metrics,
    money,
    preview,
    recovery,
    shapes,
    slow,
    upstreams,
    wait,
    web,
    webhooks,
)
from bench.phases.base import Context, Phase

PHASES: tuple[Phase, ...] = (
    web.PHASE,
    jobs.PHASE,
    upstreams.PHASE,
    money.PHASE,
    wait.PHASE,
    webhooks.PHASE,
    shapes.PHASE,
    metrics.PHASE,
    slow.PHASE,
    recovery.PHASE,
    preview.PHASE,
    events.PHASE,
)

__all__ = ["PHASES", "Context", "Phase"]

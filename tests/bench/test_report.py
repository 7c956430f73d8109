"""The benchmark report's frame drives every phase the same way: an option that skips it, its
heading in the Markdown, and its rows of the Targets table."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.__main__ import parse_args, recorded_args
from bench.phases import PHASES


def _results(argv: list[str]) -> dict[str, Any]:
    """What a run has before its first phase, as ``main`` records it."""
    return {
        "date": "2026-12-07T12:00:00+00:00",
        "commit": "abc1234",
        "command": "python -m bench " + " ".join(argv),
        "args": recorded_args(parse_args(argv)),
        "generator": "wrk (wrk 4.2.0)",
        "machine": {
            "cpu": "test CPU",
            "nproc": 2,
            "memory_gib": 4.0,
            "kernel": "6.1",
            "os": "Linux",
            "python": "3.11",
            "postgres": "16",
            "redis": "7",
            "packages": {"flask": "3"},
            "loadavg_at_start": (0.1, 0.2, 0.3),
        },
        "env": {"LOG_LEVEL": "INFO"},
        "notes": [],
        "commands": {"web": "gunicorn app.wsgi:app"},
        "elapsed_s": 12.0,
    }


def test_a_run_that_skips_every_phase_reports_each_under_its_heading_as_not_run() -> None:
    argv = [f"--skip-{phase.name}" for phase in PHASES]
    args = parse_args(argv)
    assert all(getattr(args, f"skip_{phase.name}") for phase in PHASES)
    results = _results(argv)
    results["notes"] += report.noise_notes(results, PHASES)
    results["verdicts"] = [v.as_dict() for v in report.verdicts(results, PHASES)]

    markdown = report.markdown(results, PHASES)

    where = [
        markdown.index(f"\n## {phase.heading}\n\nNot run (`--skip-{phase.name}`).\n")
        for phase in PHASES
    ]
    assert where == sorted(where)
    assert markdown.index("\n## Targets\n") < where[0]
    assert where[-1] < markdown.index("\n## How to reproduce\n")
    assert results["notes"] == []
    # Only (a) and (b) keep their rows with nothing measured: the two headline targets.
    assert [(v["name"][:3], v["value"], v["result"]) for v in results["verdicts"]] == [
        ("(a)", "—", "—"),
        ("(b)", "—", "—"),
    ]

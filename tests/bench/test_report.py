"""The benchmark report's frame drives every phase the same way: an option that skips it, its
heading in the Markdown, and its rows of the Targets table."""

from __future__ import annotations

import json
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


def test_render_writes_the_report_again_with_an_earlier_runs_figures_beside(tmp_path) -> None:
    from bench.__main__ import main

    argv = [f"--skip-{phase.name}" for phase in PHASES]
    measured = {"name": "(g) deliveries/s beside a slow receiver", "target": "none (reported)"}
    run = _results(argv) | {
        "verdicts": [
            {**measured, "value": "20.7", "result": "—"},
            {"name": "(a) POST rps ratio", "value": "—", "target": "≥ 0.5", "result": "—"},
            {"name": "(x) only in this run", "value": "3", "target": "3", "result": "PASS"},
        ]
    }
    earlier = {
        "date": "2026-12-04T17:50:24+00:00",
        "commit": "40578de",
        "command": "python -m bench ",
        "verdicts": [
            {**measured, "value": "23.8", "result": "—"},
            {"name": "(a) POST rps ratio", "value": "0.59", "target": "≥ 0.5", "result": "PASS"},
        ],
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    output = tmp_path / "report.md"

    assert (
        main(
            [
                "--render",
                str(tmp_path / "run.json"),
                "--compare",
                str(tmp_path / "earlier.json"),
                "--output",
                str(output),
            ]
        )
        == 0
    )

    markdown = output.read_text()
    section = markdown[
        markdown.index("\n## Before and after\n") : markdown.index("\n## Settings\n")
    ]
    rows = [line for line in section.splitlines() if line.startswith("| (")]
    # Only what both runs measured: not (a), which this run skipped, nor (x), new in this run.
    assert rows == ["| (g) deliveries/s beside a slow receiver | 23.8 | 20.7 | none (reported) |"]
    assert "`40578de`" in section
    assert json.loads(output.with_suffix(".json").read_text())["compare"]["commit"] == "40578de"

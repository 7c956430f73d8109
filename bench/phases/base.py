"""The one shape every phase has, and what a phase is given to run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Supervisor
from bench.report import Verdict
from bench.stack import Stack

Results = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """The run a phase joins: its options, the processes and the stack set up for it."""

    args: argparse.Namespace
    sup: Supervisor
    stack: Stack
    workdir: Path  # the run's temp dir
    logdir: Path
    use_wrk: bool
    notes: list[str]  # said under "Notes on this run"
    commands: dict[str, str]  # command lines shown in the report's settings

    def http_load(self) -> dict[str, Any]:
        """What every HTTP load measurement is given: phases (a), (b), (e) and (f)."""
        return {
            "seconds": self.args.duration,
            "connections": self.args.connections,
            "use_wrk": self.use_wrk,
            "workdir": self.workdir,
        }


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


def _no_checks(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    return None


def _nothing(results: Results) -> list[Any]:
    return []


@dataclass(frozen=True)
class Phase:
    """One phase of the benchmark, from its options to its part of the report.

    Everything but ``run`` reads only the results dict (as written to ``benchmarks.json``),
    so the report can be made again from the raw figures.
    """

    name: str  # the key of its figures in the results, and its --skip-NAME option
    heading: str  # its section's title in the Markdown
    skip_help: str
    run: Callable[[Context], Results]  # figures to merge into the results
    verdicts: Callable[[Results], list[Verdict]]  # its rows of the Targets table
    section: Callable[[Results], list[str]]  # its section's Markdown lines, when it ran
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    # Fills in defaults that depend on other options; calls parser.error on a bad value.
    check_arguments: Callable[[argparse.ArgumentParser, argparse.Namespace], None] = _no_checks
    recorded: tuple[str, ...] = ()  # its options copied into results["args"]
    summary: Callable[[Results], list[str]] = _nothing  # its lines of the console summary
    # (label, CPU seconds taken outside the run, wall seconds) of each measurement that
    # should have had the machine to itself: the noise notes.
    outside_cpu: Callable[[Results], list[tuple[str, float, float]]] = _nothing

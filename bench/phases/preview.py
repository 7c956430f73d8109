"""Phase (m): time to first audio via the early-audio preview vs the final link, and GET
beside the held listeners (measured by ``bench/preview.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.phases.base import Context, Phase, Results
from bench.preview import run_preview_phase
from bench.report import Verdict
from bench.stats import fmt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preview-jobs", type=int, default=20, help="(m) jobs (default 20)")
    parser.add_argument(
        "--preview-latency", type=float, default=60.0, help="(m) seconds a song takes (60)"
    )
    parser.add_argument(
        "--preview-jitter", type=float, default=10.0, help="(m) ± seconds around it (10)"
    )


def run(ctx: Context) -> Results:
    args = ctx.args
    print(
        f"(m) time to first audio: {args.preview_jobs} streamed jobs of "
        f"{args.preview_latency:g} ± {args.preview_jitter:g} s",
        flush=True,
    )
    return {
        "preview": run_preview_phase(
            ctx.sup,
            ctx.stack,
            jobs=args.preview_jobs,
            latency=args.preview_latency,
            jitter=args.preview_jitter,
        )
    }


def verdicts(results: Results) -> list[Verdict]:
    preview = results.get("preview")
    if not preview:
        return []
    p, f = preview["preview"], preview["final"]
    return [
        Verdict(
            "(m) first audio byte via the preview, p50 (s), before the final link's",
            f"{fmt(p['p50'])} s vs {fmt(f['p50'])} s (p99 {fmt(p['p99'])} vs {fmt(f['p99'])})",
            "preview p50 < final p50",
            p["p50"] is not None and f["p50"] is not None and p["p50"] < f["p50"],
        ),
        Verdict(
            "(m) jobs that did not succeed", str(preview["failed"]), "0", preview["failed"] == 0
        ),
        Verdict(
            "(m) listeners that did not hear the whole song",
            str(preview.get("incomplete", 0)),
            "0",
            preview.get("incomplete", 0) == 0,
        ),
    ]


def section(results: Results) -> list[str]:
    preview = results["preview"]
    p, f = preview["preview"], preview["final"]
    return [
        f"{preview['jobs']} jobs on a streaming MiniMax model, songs of {preview['latency']:g} ± "
        f"{preview['jitter']:g} s on the simulator (first piece at a quarter of that).",
        "",
        "| first audio byte, from the POST | n | p50 (s) | p99 (s) |",
        "|---|---|---|---|",
        f"| via `audio_preview` | {p['n']} | {fmt(p['p50'])} | {fmt(p['p99'])} |",
        f"| via `audio` (after SUCCEEDED) | {f['n']} | {fmt(f['p50'])} | {fmt(f['p99'])} |",
        *_beside(preview),
    ]


def _beside(preview: dict[str, Any]) -> list[str]:
    """GET of a job, one request after another, alone and beside the held listeners."""
    alone, beside = preview.get("get_alone"), preview.get("get_beside")
    if not alone:
        return []
    rows = [("alone", alone)]
    if beside:
        rows.append((f"beside {preview['held_at_probe']} held listeners", beside))
    return [
        "",
        "| GET of a job, one connection | requests | errors | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {r['n']} | {r['errors']} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} |"
            for label, r in rows
        ),
    ]


PHASE = Phase(
    name="preview",
    heading="(m) Time to first audio",
    skip_help="skip phase (m), time to first audio via the preview",
    run=run,
    verdicts=verdicts,
    section=section,
    add_arguments=add_arguments,
    recorded=("preview_jobs", "preview_latency", "preview_jitter"),
)

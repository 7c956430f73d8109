"""Phase (j): recovery after ``kill -9`` of the workers with jobs in flight.

N priced jobs are submitted to the whole stack (web, worker, scheduler, and the simulator at
its normal job duration: Chorus's default ``SIM_LATENCY``, not the other phases' minute); as
soon as the last is accepted, the worker is killed with SIGKILL (its whole process group: the
main process and its pool) and a new one started at once. The figures are read from the
``jobs`` table: how long after the restart the last job ended, and each job's end after the
restart (p50, p99). The simulator's record and the ledger say whether anything went upstream
twice, or was settled twice or not at all.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import sqlalchemy as sa

from app.money import ledger
from app.tenancy.keys import get_or_create_org
from bench.client import sim_reset, sim_summary, submit_jobs, ts
from bench.jobs import ACTIVE, job_rows, status_counts, wait_terminal
from bench.procs import Supervisor
from bench.stack import (
    CATEGORY,
    Stack,
    load_catalog,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_web,
    start_worker,
    wait_worker_ready,
)
from bench.stats import describe
from config import load_settings

MODEL = "music-recovery"
PRICE = 100  # fen
# The simulator's own defaults: the job duration of `make run`.
SIM = load_settings({})
SIM_ENV = {"SIM_LATENCY": f"{SIM.sim_latency:g}", "SIM_JITTER": f"{SIM.sim_jitter:g}"}
CATALOG = textwrap.dedent(
    f"""\
    models:
      - name: {MODEL}
        upstream_model: minimax/music-2.6
        price: {PRICE}
        currency: CNY
        expected_seconds: {SIM.sim_latency:g}
        expected_spread: {SIM.sim_jitter:g}
        deadline_seconds: 600
        limits: {{prompt: {{min: 0, max: 2000}}, lyrics: {{min: 1, max: 3500}}, reference_audio: none}}
        routes: [{{category: {CATEGORY}, accounts: [sim-aimlapi]}}]
    """
)
# Per ended job: its holds and its settlements (a capture or a release), which must be one each.
SETTLEMENTS = sa.text(
    "SELECT j.id, count(*) FILTER (WHERE l.kind = 'hold') AS holds, "
    "count(*) FILTER (WHERE l.kind IN ('capture', 'release')) AS settled "
    "FROM jobs j LEFT JOIN ledger l ON l.job_id = j.id GROUP BY j.id"
)


def run_recovery_phase(
    sup: Supervisor, stack: Stack, *, count: int, web_port: int, clients: int, wait_timeout: float
) -> dict[str, Any]:
    reset_jobs(stack)
    load_catalog(stack, "recovery", CATALOG)
    with stack.database().transaction() as session:
        org = get_or_create_org(session, "bench")
        ledger.credit(session, org.id, "CNY", count * PRICE, note="chorus bench (j)")
    start_sim(sup, stack, SIM_ENV)
    sim_reset(stack.sim_port)
    start_web(sup, stack, "web", web_port, {})
    start_worker(sup, stack, {})
    start_scheduler(sup, stack, {})
    wait_worker_ready(sup, stack)
    submit = submit_jobs(web_port, stack.api_key, count, "recovery", clients, model=MODEL)
    at_kill = status_counts(stack)
    in_flight = sum(at_kill.get(s, 0) for s in ACTIVE)
    killed_at = time.time()
    sup.kill("worker")
    restarted_at = time.time()
    start_worker(sup, stack, {})
    wait_worker_ready(sup, stack)
    ready_after = time.time() - restarted_at
    if submit.failures:
        print(f"  !!! {sum(submit.failures.values())} POSTs refused: {submit.failure_sample}")
    print(
        f"    {len(submit.accepted)} submitted, {in_flight} in flight at the kill; "
        f"new worker ready {ready_after:.1f} s after the restart",
        flush=True,
    )
    counts, finished = wait_terminal(sup, stack, restarted_at + wait_timeout, len(submit.accepted))
    rows = job_rows(stack)
    summary = sim_summary(stack.sim_port)
    with stack.database().engine.connect() as conn:
        money = conn.execute(SETTLEMENTS).all()
    for name in ("scheduler", "worker", "web", "sim"):
        sup.stop(name)

    ends = [t for t in (ts(r["finished_at"]) for r in rows) if t is not None]
    # The jobs the kill caught: every one that had not ended by then.
    after = [t - restarted_at for t in ends if t > killed_at]
    generations = summary.get("generations", [])
    matched = {r["generation_id"] for r in rows if r["generation_id"]}
    return {
        "jobs": len(submit.accepted),
        "submit_failures": dict(submit.failures),
        "sim_latency_s": SIM.sim_latency,
        "sim_jitter_s": SIM.sim_jitter,
        "in_flight_at_kill": in_flight,
        "status_counts_at_kill": at_kill,
        "finished_before_timeout": finished,
        "final_status_counts": counts,
        "failed_by_code": _codes(rows),
        "worker_ready_after_restart_s": ready_after,
        "last_end_after_restart_s": max(after) if after else None,
        "end_after_restart_s": describe(after),
        # A generation asked for twice (the simulator counts submits of the same request).
        "submitted_twice": sum(1 for g in generations if g["submit_count"] > 1),
        # Generations no job knows: a job killed inside its submit made one and failed
        # upstream_unknown; any beyond those would be a job's second generation.
        "orphan_generations": sum(1 for g in generations if g["id"] not in matched),
        "ledger_not_one_hold_one_settlement": sum(
            1 for m in money if (m.holds, m.settled) != (1, 1)
        ),
    }


def _codes(rows: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        if row["status"] == "FAILED":
            found[row["error_code"]] = found.get(row["error_code"], 0) + 1
    return found

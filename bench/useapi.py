"""Phase (d2): useapi throughput with K accounts (see ``bench/upstreams.py``).

useapi.net runs one song at a time per upstream account, so K accounts make at most K songs at
once: jobs completed per second against the ideal K ÷ G (G the song's latency), and the
simulator's own record that no account ever ran two songs at once (``max_concurrent``) and
never answered "busy" (``rejected_busy``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from bench.client import sim_reset, sim_summary, submit_jobs
from bench.procs import Supervisor
from bench.stack import (
    Stack,
    reset_jobs,
    start_scheduler,
    start_sim,
    start_web,
    start_worker,
    wait_worker_ready,
)
from bench.stats import describe
from bench.upstreams import (
    PHASE_ENV,
    USEAPI_LATENCY,
    completion_s,
    outcome_of,
    useapi_model,
    wait_done,
)


def _slot_gaps(generations: list[dict[str, Any]]) -> list[float]:
    """Per account, the idle time between one song being ready and the next one's create:
    what Chorus adds on top of the upstream's own time (detection, download, wake, submit)."""
    by_account: dict[str, list[dict[str, Any]]] = {}
    for gen in generations:
        by_account.setdefault(str(gen["account"]), []).append(gen)
    gaps = []
    for gens in by_account.values():
        gens.sort(key=lambda g: g["created_at"])
        for before, after in itertools.pairwise(gens):
            if before.get("ready_at") is not None:
                gaps.append(after["created_at"] - before["ready_at"])
    return gaps


def _useapi_run(
    sup: Supervisor, stack: Stack, *, web_port: int, k: int, per_account: int, clients: int
) -> dict[str, Any]:
    sim_reset(stack.sim_port)
    count = per_account * k
    submit = submit_jobs(
        web_port,
        stack.api_key,
        count,
        f"useapi-k{k}",
        clients,
        model=useapi_model(k),
        marker=f" [sim:latency={USEAPI_LATENCY:g}]",
    )
    ids = list(submit.accepted.values())
    ideal_s = count / k * USEAPI_LATENCY
    rows = wait_done(sup, stack, ids, submit.ended + 3 * ideal_s + 120.0, f"useapi K={k}")
    summary = sim_summary(stack.sim_port)
    accounts = [a for a in summary.get("accounts", []) if a["protocol"] == "useapi"]
    generations = [g for g in summary.get("generations", []) if g["protocol"] == "useapi"]
    completion = completion_s(submit, rows)
    outcome = outcome_of(rows, len(ids))
    rate = outcome["succeeded"] / completion if completion else None
    ideal_rate = k / USEAPI_LATENCY
    result = {
        "k": k,
        "jobs": count,
        "accepted": len(ids),
        "submit_seconds": submit.seconds,
        "completion_s": completion,
        "ideal_s": ideal_s,
        "rate_per_s": rate,
        "ideal_rate_per_s": ideal_rate,
        "efficiency": rate / ideal_rate if rate is not None else None,
        "accounts_used": len({r["account_id"] for r in rows if r["account_id"]}),
        "max_concurrent": max((a["max_concurrent"] for a in accounts), default=0),
        "max_concurrent_by_account": {a["account"]: a["max_concurrent"] for a in accounts},
        "rejected_busy": sum(a["rejected_busy"] for a in accounts),
        "generations": len(generations),
        "slot_gap_s": describe(_slot_gaps(generations)),
        "upstream_latency_s": describe(
            [g["ready_at"] - g["created_at"] for g in generations if g.get("ready_at")]
        ),
        "sim_by_status_code": summary.get("counts", {}).get("by_status_code", {}),
        **outcome,
    }
    print(
        f"    useapi K={k}: {outcome['succeeded']}/{count} in {completion or 0:.1f}s → "
        f"{rate or 0:.3f}/s vs ideal {ideal_rate:.3f}/s (efficiency "
        f"{result['efficiency'] or 0:.2f}); max concurrent {result['max_concurrent']}, "
        f"rejected busy {result['rejected_busy']}",
        flush=True,
    )
    return result


def run_useapi(
    sup: Supervisor,
    stack: Stack,
    *,
    web_port: int,
    ks: list[int],
    per_account: int,
    clients: int,
) -> dict[str, Any]:
    """(d2): for each K, ``per_account``·K jobs on a model routed to K useapi accounts."""
    reset_jobs(stack)
    started = time.time()
    start_sim(sup, stack, PHASE_ENV)
    start_web(sup, stack, "web", web_port, PHASE_ENV)
    start_worker(sup, stack, PHASE_ENV)
    start_scheduler(sup, stack, PHASE_ENV)
    wait_worker_ready(sup, stack)
    print(f"    stack up in {time.time() - started:.1f}s", flush=True)
    runs = [
        _useapi_run(sup, stack, web_port=web_port, k=k, per_account=per_account, clients=clients)
        for k in ks
    ]
    log_errors = {n: sup.log_errors(n) for n in ("worker", "web", "scheduler", "sim")}
    for name in ("scheduler", "worker", "web", "sim"):
        sup.stop(name)
    reset_jobs(stack)
    return {
        "latency_s": USEAPI_LATENCY,
        "per_account": per_account,
        "runs": runs,
        "log_errors": log_errors,
    }

"""Phase (e): submit throughput with money on, beside money off (issue [money]).

Phase (a)'s gunicorn command line and load generator, web tier only (no worker, no scheduler):
POST throughput for a free model (price 0, phase (a)'s own case) and for a priced one (100 CNY
a song, every org funded so that no request is refused), measured back to back.

A priced submit adds, to what a free one does, a conditional UPDATE of the org's balance row
(the hold) and an INSERT into the ledger, in the same one statement as the job's INSERT. The
hold locks the org's balance row until that statement commits, so one org's priced submits
queue on each other. Each model is therefore measured twice: every request from one org's
key (phase (a)'s load, and the figure the target is judged on: "submit throughput with money
on, beside core's figure"), and spread round-robin over ``ORGS`` orgs, one key each, where
the row locks barely meet.
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.money import ledger
from app.tenancy.keys import create_key, get_or_create_org
from bench import load
from bench.http_phase import WARMUP_SECONDS, _per_request, metered_run, say_refusals
from bench.procs import Supervisor, free_port
from bench.stack import (
    CATEGORY,
    LYRICS,
    MODEL,
    SIM_JITTER,
    SIM_LATENCY,
    Stack,
    load_catalog,
    reset_jobs,
    start_web,
)
from bench.stats import median_item

PAID_MODEL = "music-2.6-priced"
PRICE = 100  # fen: ¥1.00 a song, the seed platform's price
CURRENCY = "CNY"
# Per org, far more than any measurement can spend (~200 req/s × 15 s × ¥1 is ¥3,000), so
# the balance check never refuses a request and the figure is the cost of a successful hold.
FUND = 1_000_000_000
ORGS = 8

CATALOG = textwrap.dedent(
    f"""\
    models:
      - name: {PAID_MODEL}
        upstream_model: minimax/music-2.6
        price: {PRICE}
        currency: {CURRENCY}
        expected_seconds: {SIM_LATENCY:g}
        expected_spread: {SIM_JITTER:g}
        deadline_seconds: 600
        limits: {{prompt: {{min: 0, max: 2000}}, lyrics: {{min: 1, max: 3500}}, reference_audio: none}}
        routes: [{{category: {CATEGORY}, accounts: [sim-aimlapi]}}]
    """
)


@dataclass(frozen=True)
class Tenant:
    org: str
    org_id: int
    key: str


@dataclass(frozen=True)
class Case:
    name: str  # "free_1" ...
    label: str
    model: str
    tenants: list[Tenant]

    @property
    def priced(self) -> bool:
        return self.model == PAID_MODEL


def _tenants(stack: Stack, prefix: str, count: int) -> list[Tenant]:
    """``count`` fresh orgs, one key each, each funded with FUND (free orgs too: the model's
    price is then the only difference between the cases)."""
    out = []
    with stack.database().transaction() as session:
        for i in range(1, count + 1):
            name = f"{prefix}-{i}"
            key = create_key(session, name, label="chorus bench money")
            org = get_or_create_org(session, name)
            ledger.credit(session, org.id, CURRENCY, FUND, note="chorus bench")
            out.append(Tenant(name, org.id, key))
    return out


def _body(model: str) -> str:
    # load.N_MARK becomes "<thread>-<n>": every POST carries a distinct prompt, as in phase (a).
    return json.dumps(
        {
            "model": model,
            "catelogid": CATEGORY,
            "prompt": f"bench money {load.N_MARK}: upbeat pop, sunny day",
            "lyrics": LYRICS,
        }
    )


def _target(case: Case, port: int) -> load.Target:
    return load.Target(
        case.label,
        port,
        "POST",
        ["/v1/music/generations"],
        {"Content-Type": "application/json"},
        _body(case.model),
        rotate=tuple({"Authorization": f"Bearer {t.key}"} for t in case.tenants),
    )


def _money_check(stack: Stack, case: Case) -> dict[str, Any]:
    """What the case's requests left in the tables: jobs, holds and balances, per org."""
    ids = [t.org_id for t in case.tenants]
    # One snapshot for all three reads: a request still finishing as they run would otherwise
    # count in one table and not yet in the next.
    engine = stack.database().engine
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        per_org = {
            int(org): int(n)
            for org, n in conn.execute(
                sa.text("SELECT org_id, count(*) FROM jobs WHERE org_id = ANY(:ids) GROUP BY 1"),
                {"ids": ids},
            )
        }
        holds = int(
            conn.execute(
                sa.text("SELECT count(*) FROM ledger WHERE org_id = ANY(:ids) AND kind = 'hold'"),
                {"ids": ids},
            ).scalar_one()
        )
        available, held = conn.execute(
            sa.text(
                "SELECT coalesce(sum(available), 0), coalesce(sum(held), 0) FROM balances "
                "WHERE org_id = ANY(:ids) AND currency = :currency"
            ),
            {"ids": ids, "currency": CURRENCY},
        ).one()
    jobs = sum(per_org.values())
    price = PRICE if case.priced else 0
    expect_holds = jobs if case.priced else 0
    consistent = (
        holds == expect_holds
        and int(held) == price * jobs
        and int(available) == FUND * len(ids) - price * jobs
    )
    return {
        "expected_available": FUND * len(ids) - price * jobs,
        "expected_held": price * jobs,
        "jobs_created": jobs,
        "jobs_per_org": sorted(per_org.values()),
        "holds": holds,
        "available": int(available),
        "held": int(held),
        "consistent": consistent,
    }


def run_money_phase(
    sup: Supervisor,
    stack: Stack,
    *,
    seconds: float,
    connections: int,
    use_wrk: bool,
    workdir: Path,
    orgs: int = ORGS,
    rounds: int = 3,
) -> dict[str, Any]:
    """Free beside priced submits, ``rounds`` times over; each case's figure is its median
    round by req/s (one 15-second measurement on a shared machine can meet a host slowdown)."""
    reset_jobs(stack)
    load_catalog(stack, "money", CATALOG)
    # Each round measures every case on orgs of its own, which start with no jobs.
    cases = [
        ("free_1", f"free model ({MODEL}), 1 org", MODEL, "free-one", 1),
        (
            "priced_1",
            f"priced model ({PAID_MODEL}, {PRICE} {CURRENCY}), 1 org",
            PAID_MODEL,
            "priced-one",
            1,
        ),
        (f"free_{orgs}", f"free model, {orgs} orgs round-robin", MODEL, "free-many", orgs),
        (
            f"priced_{orgs}",
            f"priced model, {orgs} orgs round-robin",
            PAID_MODEL,
            "priced-many",
            orgs,
        ),
    ]
    # Warm-up orgs of their own, so the measured orgs start with no jobs at all.
    warmups = [
        Case("warm_free", "warm-up free", MODEL, _tenants(stack, "warm-free", 1)),
        Case("warm_priced", "warm-up priced", PAID_MODEL, _tenants(stack, "warm-priced", 1)),
    ]
    port = free_port()
    web = start_web(sup, stack, "web-money", port, {})
    dbname = str(make_url(stack.database_url).database)

    def drive(case: Case, duration: float) -> tuple[load.LoadResult, dict[str, float]]:
        target = _target(case, port)
        result, used = metered_run(target, duration, connections, workdir, use_wrk, web.pid, dbname)
        sup.check_alive(["web-money"])
        say_refusals(target, result)
        return result, used

    out: dict[str, Any] = {
        "chorus_command": " ".join(web.argv),
        "connections": connections,
        "seconds": seconds,
        "warmup_seconds": WARMUP_SECONDS,
        "orgs": orgs,
        "price": PRICE,
        "currency": CURRENCY,
        "fund_per_org": FUND,
        "paid_model": PAID_MODEL,
        "free_model": MODEL,
        "judged_on": "priced_1 / free_1",
        "rounds": rounds,
        "cases": {},
    }
    for case in warmups:
        drive(case, WARMUP_SECONDS)
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
    for round_ in range(1, rounds + 1):
        for name, label, model, prefix, count in cases:
            case = Case(name, label, model, _tenants(stack, f"{prefix}-{round_}", count))
            result, used = drive(case, seconds)
            # The pause lets requests the server was still serving when the load stopped commit.
            time.sleep(1.0)
            measured[name].append(
                {
                    **result.as_dict(),
                    "orgs": len(case.tenants),
                    "priced": case.priced,
                    "cpu": _per_request(used, result),
                    "tables": _money_check(stack, case),
                }
            )
            print(
                f"    {case.label}: {result.rps:,.0f} req/s (p50 {result.p50_ms or 0:.1f} ms, "
                f"p99 {result.p99_ms or 0:.1f} ms), non-2xx {result.non_2xx}",
                flush=True,
            )
    for name, runs in measured.items():
        out["cases"][name] = {
            **median_item(runs, key=lambda run: run["rps"]),
            "rps_rounds": [run["rps"] for run in runs],
            "faults_all_rounds": sum(run["non_2xx"] + run["socket_errors"] for run in runs),
            "consistent_all_rounds": all(run["tables"]["consistent"] for run in runs),
        }
    sup.stop("web-money")
    c = out["cases"]
    for n in (1, orgs):
        free, priced = c[f"free_{n}"]["rps"], c[f"priced_{n}"]["rps"]
        out[f"ratio_{n}"] = priced / free if free else None
    out["ratio"] = out["ratio_1"]
    out["slowdown"] = 1 - out["ratio"] if out["ratio"] is not None else None
    reset_jobs(stack)
    return out

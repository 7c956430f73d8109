"""The ledger (``app.money.ledger``) called directly, on real Postgres.

Every operation runs in a transaction of its own, the way the API and the engine call it.
The invariants checked throughout: ``available`` and ``held`` never go below zero, a job is
captured or released at most once, and the stored balance always equals the one the ledger
alone recomputes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

from app.db import Database
from app.money import ledger
from app.money.models import LedgerEntry
from app.tenancy.keys import get_or_create_org
from tests.conftest import commit_once_blocked

CNY = "CNY"


def new_org(db: Database, name: str = "acme", amount: int = 0, currency: str = CNY) -> int:
    with db.transaction() as session:
        org_id = get_or_create_org(session, name).id
        if amount:
            ledger.credit(session, org_id, currency, amount)
    return org_id


def hold(
    db: Database, org_id: int, job_id: str, price: int, min_balance: int = 0, currency: str = CNY
) -> bool:
    with db.transaction() as session:
        return ledger.hold(
            session,
            org_id=org_id,
            currency=currency,
            price=price,
            min_balance=min_balance,
            job_id=job_id,
        )


def settle(db: Database, job_id: str, *, capture: bool) -> bool:
    with db.transaction() as session:
        return ledger.settle(session, job_id, capture=capture)


def totals(db: Database, org_id: int, currency: str = CNY) -> ledger.Totals:
    with db.session() as session:
        return ledger.balance(session, org_id, currency)


def recomputed(db: Database, org_id: int, currency: str = CNY) -> ledger.Totals:
    with db.session() as session:
        return ledger.recompute(session, org_id, currency)


def entries(db: Database, job_id: str | None = None) -> list[tuple[str, int, int | None]]:
    """(kind, amount, job_amount) of the ledger, oldest first, optionally for one job."""
    query = sa.select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.job_amount).order_by(
        LedgerEntry.id
    )
    if job_id is not None:
        query = query.where(LedgerEntry.job_id == job_id)
    with db.session() as session:
        return [(k, a, j) for k, a, j in session.execute(query).all()]


def assert_consistent(db: Database, org_id: int, currency: str = CNY) -> ledger.Totals:
    stored = totals(db, org_id, currency)
    assert stored.available >= 0 and stored.held >= 0, stored
    assert recomputed(db, org_id, currency) == stored
    return stored


# ------------------------------------------------------------------ credit


def test_credit_tops_up_and_adjusts_and_is_recorded(db: Database) -> None:
    org = new_org(db)
    with db.transaction() as session:
        assert ledger.credit(session, org, CNY, 500, note="first") == 500
        assert (
            ledger.credit(session, org, CNY, -120, note="refund fix", kind=ledger.ADJUSTMENT) == 380
        )
    assert totals(db, org) == ledger.Totals(380, 0)
    assert entries(db) == [("topup", 500, None), ("adjustment", -120, None)]
    assert_consistent(db, org)


def test_currencies_and_orgs_are_separate_balances(db: Database) -> None:
    acme, globex = new_org(db, "acme", 300), new_org(db, "globex", 70)
    with db.transaction() as session:
        ledger.credit(session, acme, "USD", 9)
    assert totals(db, acme) == ledger.Totals(300, 0)
    assert totals(db, acme, "USD") == ledger.Totals(9, 0)
    assert totals(db, globex) == ledger.Totals(70, 0)
    assert totals(db, globex, "USD") == ledger.Totals(0, 0)  # no row at all reads as zero
    assert not hold(db, globex, "luid_g1", 71)
    assert hold(db, acme, "luid_a1", 71)
    assert totals(db, globex) == ledger.Totals(70, 0)
    for org, currency in ((acme, CNY), (acme, "USD"), (globex, CNY)):
        assert_consistent(db, org, currency)


# ------------------------------------------------------------------ hold


def test_hold_moves_the_price_from_available_to_held(db: Database) -> None:
    org = new_org(db, amount=250)
    assert hold(db, org, "luid_1", 100)
    assert totals(db, org) == ledger.Totals(150, 100)
    assert entries(db, "luid_1") == [("hold", -100, 100)]
    assert_consistent(db, org)


def test_hold_of_exactly_the_balance_succeeds_and_one_more_does_not(db: Database) -> None:
    org = new_org(db, amount=200)
    assert hold(db, org, "luid_1", 100)
    assert hold(db, org, "luid_2", 100)
    assert totals(db, org) == ledger.Totals(0, 200)
    assert not hold(db, org, "luid_3", 100)
    assert not hold(db, org, "luid_4", 1)
    assert entries(db, "luid_3") == entries(db, "luid_4") == []
    assert_consistent(db, org)


def test_hold_without_a_balance_row_refuses_and_leaves_a_zero_row(db: Database) -> None:
    org = new_org(db)
    assert not hold(db, org, "luid_1", 1)
    assert totals(db, org) == ledger.Totals(0, 0)
    assert entries(db) == []
    assert_consistent(db, org)


@pytest.mark.parametrize(
    ("available", "accepted"),
    [(499, False), (500, False), (501, True), (10_000, True)],
)
def test_min_balance_must_be_exceeded(db: Database, available: int, accepted: bool) -> None:
    # The seed platform's rule: the balance must be *above* the model's minimum, not at it.
    org = new_org(db, amount=available)
    assert hold(db, org, "luid_1", 100, min_balance=500) is accepted
    expected = ledger.Totals(available - 100, 100) if accepted else ledger.Totals(available, 0)
    assert totals(db, org) == expected
    assert_consistent(db, org)


def test_a_zero_price_hold_is_accepted_and_writes_nothing(db: Database) -> None:
    org = new_org(db)
    assert hold(db, org, "luid_free", 0)
    assert entries(db) == []
    assert totals(db, org) == ledger.Totals(0, 0)
    # ...and so there is nothing to settle.
    assert not settle(db, "luid_free", capture=True)
    assert not settle(db, "luid_free", capture=False)
    assert entries(db) == []


def test_a_second_hold_for_one_job_is_refused_by_the_database(db: Database) -> None:
    org = new_org(db, amount=500)
    assert hold(db, org, "luid_1", 100)
    with pytest.raises(sa.exc.IntegrityError):
        hold(db, org, "luid_1", 100)
    # The failed transaction left nothing behind.
    assert totals(db, org) == ledger.Totals(400, 100)
    assert_consistent(db, org)


# ------------------------------------------------------------------ settle


@pytest.mark.parametrize(
    ("capture", "available", "entry"),
    [(True, 200, ("capture", 0, 100)), (False, 300, ("release", 100, 100))],
    ids=["capture-spends-it", "release-gives-it-back"],
)
def test_settling_spends_or_gives_back_the_held_money(
    db: Database, capture: bool, available: int, entry: tuple[str, int, int]
) -> None:
    org = new_org(db, amount=300)
    hold(db, org, "luid_1", 100)
    assert settle(db, "luid_1", capture=capture)
    assert totals(db, org) == ledger.Totals(available, 0)
    assert entries(db, "luid_1") == [("hold", -100, 100), entry]
    assert_consistent(db, org)


@pytest.mark.parametrize("capture", [True, False])
def test_settling_twice_the_same_way_is_a_no_op(db: Database, capture: bool) -> None:
    org = new_org(db, amount=300)
    hold(db, org, "luid_1", 100)
    assert settle(db, "luid_1", capture=capture)
    after_first = totals(db, org)
    assert not settle(db, "luid_1", capture=capture)
    assert not settle(db, "luid_1", capture=capture)
    assert totals(db, org) == after_first
    assert len(entries(db, "luid_1")) == 2
    assert_consistent(db, org)


@pytest.mark.parametrize(
    "first", [True, False], ids=["capture-then-release", "release-then-capture"]
)
def test_the_other_settlement_after_one_is_refused(db: Database, first: bool) -> None:
    org = new_org(db, amount=300)
    hold(db, org, "luid_1", 100)
    assert settle(db, "luid_1", capture=first)
    after_first = totals(db, org)
    assert not settle(db, "luid_1", capture=not first)
    assert totals(db, org) == after_first
    kinds = [kind for kind, _, _ in entries(db, "luid_1")]
    assert kinds == ["hold", "capture" if first else "release"]
    assert_consistent(db, org)


def test_a_job_without_a_hold_settles_to_nothing(db: Database) -> None:
    org = new_org(db, amount=300)
    assert not settle(db, "luid_never_held", capture=True)
    assert not settle(db, "luid_never_held", capture=False)
    assert totals(db, org) == ledger.Totals(300, 0)
    assert entries(db) == [("topup", 300, None)]


def test_settle_rolls_back_with_its_transaction(db: Database) -> None:
    """The engine settles in the transaction that ends the job: a rollback undoes both."""
    org = new_org(db, amount=300)
    hold(db, org, "luid_1", 100)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction() as session:
        assert ledger.settle(session, "luid_1", capture=True)
        raise Boom
    assert totals(db, org) == ledger.Totals(200, 100)
    assert [k for k, _, _ in entries(db, "luid_1")] == ["hold"]
    # Still settleable afterwards, once.
    assert settle(db, "luid_1", capture=True)
    assert totals(db, org) == ledger.Totals(200, 0)
    assert_consistent(db, org)


# ------------------------------------------------------------------ recompute


@dataclass
class Expected:
    """What the balances must be, computed independently of the code under test."""

    available: dict[tuple[int, str], int] = field(default_factory=dict)
    held: dict[tuple[int, str], int] = field(default_factory=dict)
    holds: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # job → org, cur, price
    settled: set[str] = field(default_factory=set)


@pytest.mark.parametrize("seed", [1, 7, 42, 2024, 31337])
def test_recompute_equals_the_balance_after_a_random_sequence(db: Database, seed: int) -> None:
    rng = random.Random(seed)
    orgs = [new_org(db, name) for name in ("acme", "globex", "initech")]
    pairs = [(org, cur) for org in orgs for cur in (CNY, "USD")]
    model = Expected()
    for pair in pairs:
        model.available[pair] = model.held[pair] = 0
    job_seq = 0

    class Abort(Exception):
        pass

    for step in range(160):
        org, cur = rng.choice(pairs)
        op = rng.choices(
            ["topup", "adjust", "hold", "capture", "release", "resettle", "ghost", "rollback"],
            weights=[3, 1, 6, 3, 3, 2, 1, 1],
        )[0]
        key = (org, cur)
        if op == "topup":
            amount = rng.randint(1, 400)
            with db.transaction() as session:
                ledger.credit(session, org, cur, amount)
            model.available[key] += amount
        elif op == "adjust" and model.available[key] > 0:
            amount = -rng.randint(1, model.available[key])
            with db.transaction() as session:
                ledger.credit(session, org, cur, amount, kind=ledger.ADJUSTMENT)
            model.available[key] += amount
        elif op == "hold":
            job_seq += 1
            job_id = f"luid_{seed}_{job_seq}"
            price = rng.choice([0, 1, 50, 100, 250])
            min_balance = rng.choice([0, 0, 0, 100, 300])
            expected = model.available[key] >= price and (
                not min_balance or model.available[key] > min_balance
            )
            assert hold(db, org, job_id, price, min_balance, cur) is expected, (step, op)
            if expected and price:
                model.available[key] -= price
                model.held[key] += price
                model.holds[job_id] = (org, cur, price)
        elif op in ("capture", "release"):
            open_jobs = sorted(set(model.holds) - model.settled)
            if not open_jobs:
                continue
            job_id = rng.choice(open_jobs)
            assert settle(db, job_id, capture=op == "capture"), (step, op, job_id)
            h_org, h_cur, price = model.holds[job_id]
            model.held[(h_org, h_cur)] -= price
            if op == "release":
                model.available[(h_org, h_cur)] += price
            model.settled.add(job_id)
        elif op == "resettle" and model.settled:
            job_id = rng.choice(sorted(model.settled))
            assert not settle(db, job_id, capture=rng.random() < 0.5), (step, op, job_id)
        elif op == "ghost":
            assert not settle(db, f"luid_ghost_{step}", capture=rng.random() < 0.5)
        elif op == "rollback":
            # A transaction that moves money and then fails leaves no trace.
            job_seq += 1
            with pytest.raises(Abort), db.transaction() as session:
                ledger.credit(session, org, cur, 1000)
                ledger.hold(
                    session,
                    org_id=org,
                    currency=cur,
                    price=10,
                    min_balance=0,
                    job_id=f"luid_{seed}_{job_seq}",
                )
                raise Abort
        for pair in pairs:
            stored = assert_consistent(db, *pair)
            assert stored == ledger.Totals(model.available[pair], model.held[pair]), (step, op)
    # The run exercised every kind of entry.
    kinds = {kind for kind, _, _ in entries(db)}
    assert {"topup", "hold", "capture", "release"} <= kinds


# ------------------------------------------------------------------ concurrency


def run_threads(count: int, target: Callable[[int], object]) -> list[object]:
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_holds_never_overdraw(db: Database) -> None:
    org = new_org(db, amount=1_000)
    results = run_threads(30, lambda i: hold(db, org, f"luid_{i}", 100))
    assert all(isinstance(r, bool) for r in results), results
    assert results.count(True) == 10
    assert totals(db, org) == ledger.Totals(0, 1_000)
    assert_consistent(db, org)


@pytest.mark.parametrize("capture", [True, False])
def test_concurrent_identical_settlements_move_the_money_once(db: Database, capture: bool) -> None:
    org = new_org(db, amount=1_000)
    hold(db, org, "luid_1", 100)
    results = run_threads(12, lambda _: settle(db, "luid_1", capture=capture))
    assert all(isinstance(r, bool) for r in results), results
    assert results.count(True) == 1
    assert totals(db, org) == (ledger.Totals(900, 0) if capture else ledger.Totals(1_000, 0))
    assert len(entries(db, "luid_1")) == 2
    assert_consistent(db, org)


def test_concurrent_capture_and_release_of_one_job_settle_it_once(db: Database) -> None:
    org = new_org(db, amount=1_000)
    hold(db, org, "luid_1", 100)
    outcome: list[object] = []

    # A captures and keeps its transaction open; B releases meanwhile.
    session_a = db.session()
    session_a.begin()
    assert ledger.settle(session_a, "luid_1", capture=True)

    def release() -> None:
        try:
            outcome.append(settle(db, "luid_1", capture=False))
        except Exception as exc:  # noqa: BLE001 - a refusal by the database is fine too
            outcome.append(exc)

    commit_once_blocked(db, session_a, release)

    kinds = [kind for kind, _, _ in entries(db, "luid_1")]
    stored = totals(db, org)
    assert kinds.count("capture") + kinds.count("release") == 1, (kinds, stored, outcome)
    assert stored == ledger.Totals(900, 0), stored
    assert_consistent(db, org)

"""A keyed submit interrupted at each of its steps, then retried with the same key: one job,
one hold, the same id, on real Postgres (and, for a killed process, a real web process)."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.db import Database
from app.extensions import Chorus
from app.idempotency import store
from app.jobs import intake
from app.money import ledger
from app.money.models import LedgerEntry
from app.tenancy.models import ApiKey
from tests.api import test_v2 as v2
from tests.api.test_idempotency import URL, key_rows, post
from tests.conftest import CREDIT, GOOD_BODY, Processes, auth, job_rows, lock_waiters, wait_for
from tests.serving import serve

pytestmark = pytest.mark.usefixtures("catalog")


class Crash(Exception):
    """A fault no handler knows: the request dies where it is raised."""


# Each step of a keyed submit, as (owner, function, fault): "after" runs the real function
# then fails, "instead" fails in its place.
STEPS: dict[str, tuple[Any, str, str]] = {
    "after the claim": (store, "claim", "after"),
    # ``charge`` runs right after the job's INSERT, before anything else.
    "after the job's insert": (intake, "charge", "instead"),
    "after the hold": (ledger, "hold", "after"),
    "after the answer is rendered": (store, "record", "instead"),
    "after the answer is stored": (store, "record", "after"),
    "just before the commit": (Chorus, "commit", "instead"),
    "just after the commit": (Chorus, "commit", "after"),
}


def inject(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, fault: str) -> None:
    real = getattr(owner, name)

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if fault == "after":
            real(*args, **kwargs)
        raise Crash(f"{fault} {name}")

    monkeypatch.setattr(owner, name, faulty)


def assert_one_job_held_once(db: Database, job_id: str) -> None:
    """``job_id`` is the only job; the ledger holds its price once, and the balance agrees."""
    (job,) = job_rows(db)
    assert job.id == job_id
    with db.session() as session:
        entries = Counter(session.execute(sa.select(LedgerEntry.job_id, LedgerEntry.kind)).all())
        org_id = session.scalar(sa.select(ApiKey.org_id))
        assert org_id is not None
        balance = ledger.balance(session, org_id, "CNY")
        assert ledger.recompute(session, org_id, "CNY") == balance
    assert entries == Counter({(job_id, "hold"): 1, (None, "topup"): 1})
    assert balance == ledger.Totals(CREDIT - job.price, job.price)


@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_each_step_then_a_retry_makes_exactly_one_job(
    step: str, client: Any, db: Database, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, *STEPS[step])
    with pytest.raises(Crash):
        answered = post(client, api_key, "fault-1")
        pytest.fail(f"answered {answered.status_code} {answered.get_data(as_text=True)[:400]}")
    monkeypatch.undo()
    committed = step == "just after the commit"
    # Before the commit nothing is left, the key included; after it, all of it.
    assert len(job_rows(db)) == len(key_rows(db)) == int(committed)
    retry = post(client, api_key, "fault-1")
    assert retry.status_code == 202, retry.get_json()
    assert (retry.headers.get("Idempotent-Replayed") == "true") == committed
    assert_one_job_held_once(db, retry.get_json()["id"])
    again = post(client, api_key, "fault-1")
    assert again.get_data() == retry.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_one_job_held_once(db, retry.get_json()["id"])


@pytest.mark.parametrize(("step", "committed"), [("answer-stored", False), ("committed", True)])
def test_a_web_process_killed_mid_submit_then_a_retry_makes_exactly_one_job(
    step: str,
    committed: bool,
    procs: Processes,
    tmp_path: Path,
    client: Any,
    db: Database,
    api_key: str,
) -> None:
    flag, port_file = tmp_path / "reached", tmp_path / "port"
    procs.start(
        "web",
        [sys.executable, "-m", "tests.api.blocking_web", step, str(flag), str(port_file)],
    )
    port = wait_for(
        lambda: port_file.exists() and port_file.read_text(), 60, message="the web process"
    )
    lost: list[Exception] = []

    def first() -> None:
        try:
            requests.post(
                f"http://127.0.0.1:{port}{URL}",
                json=GOOD_BODY,
                headers={**auth(api_key), "Idempotency-Key": "killed-1"},
                timeout=60,
            )
        except requests.RequestException as exc:
            lost.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    wait_for(flag.exists, 30, message=f"the submit to reach {step}")
    procs.kill("web")
    thread.join(timeout=30)
    assert lost, "the killed process answered"
    assert len(job_rows(db)) == int(committed)
    retry = post(client, api_key, "killed-1")
    assert retry.status_code == 202, retry.get_json()
    assert (retry.headers.get("Idempotent-Replayed") == "true") == committed
    assert_one_job_held_once(db, retry.get_json()["id"])


@pytest.mark.parametrize("first_commits", [True, False])
def test_a_duplicate_waits_for_the_first_transaction_then_follows_its_outcome(
    first_commits: bool, app: Any, db: Database, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request is held inside its transaction (its key, job, hold and answer
    written, not committed) while a duplicate arrives: the duplicate waits on the key, then
    replays the first's answer, or, if the first rolled back, makes the job itself."""
    inside, go_on = threading.Event(), threading.Event()
    record = store.record

    def held(*args: Any, **kwargs: Any) -> bool:
        stored = record(*args, **kwargs)
        if not inside.is_set():  # the first request only
            inside.set()
            go_on.wait(30)
            if not first_commits:
                raise Crash("rolled back")
        return stored

    monkeypatch.setattr(store, "record", held)
    answers: dict[str, requests.Response] = {}

    def send(name: str, url: str) -> None:
        headers = {**auth(api_key), "Idempotency-Key": "twins"}
        answers[name] = requests.post(f"{url}{URL}", json=GOOD_BODY, headers=headers, timeout=60)

    with serve(app) as url:
        first = threading.Thread(target=send, args=("first", url))
        first.start()
        assert inside.wait(30)
        second = threading.Thread(target=send, args=("second", url))
        second.start()
        wait_for(lambda: lock_waiters(db), 30, message="the duplicate to wait on the key")
        assert job_rows(db) == []  # nothing of the first is visible before its commit
        go_on.set()
        first.join(timeout=60)
        second.join(timeout=60)
    second_answer = answers["second"]
    assert second_answer.status_code == 202, second_answer.text
    if first_commits:
        assert answers["first"].status_code == 202
        assert second_answer.headers["Idempotent-Replayed"] == "true"
        assert second_answer.content == answers["first"].content
    else:
        assert answers["first"].status_code == 500
        assert "Idempotent-Replayed" not in second_answer.headers
    assert_one_job_held_once(db, second_answer.json()["id"])


@pytest.mark.parametrize("step", ["after the hold", "just after the commit"])
def test_the_v2_submit_is_as_safe(
    step: str, client: Any, db: Database, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, *STEPS[step])
    with pytest.raises(Crash):
        v2.submit(client, api_key, **{"Idempotency-Key": "v2-fault"})
    monkeypatch.undo()
    retry = v2.submit(client, api_key, **{"Idempotency-Key": "v2-fault"})
    assert retry.status_code == 201, retry.get_json()
    committed = step == "just after the commit"
    assert (retry.headers.get("Idempotent-Replayed") == "true") == committed
    assert_one_job_held_once(db, retry.get_json()["id"])

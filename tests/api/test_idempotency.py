"""``Idempotency-Key`` on POST /v1/music/generations, on real Postgres.

Concurrency is exercised against a real threaded server: the first request is held open
(with ``Prefer: wait``, no worker running, so its job stays QUEUED) while the second arrives.
Faults at each step of a keyed submit are in ``test_idempotent_faults``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app.api.errors import ApiError
from app.api.idempotency import fingerprint
from app.db import utcnow
from app.idempotency import store
from app.idempotency.models import IdempotencyKey
from app.jobs import intake
from app.jobs.models import Job
from app.money.models import LedgerEntry
from app.tenancy.models import ApiKey
from tests.conftest import GOOD_BODY, auth, funded_key, job_rows, wait_for
from tests.serving import serve

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"


def post(client: Any, key: str, idem: str | None, body: Any = None, **headers: str) -> Any:
    extra = {"Idempotency-Key": idem} if idem is not None else {}
    return client.post(
        URL, json=GOOD_BODY if body is None else body, headers={**auth(key), **extra, **headers}
    )


def key_rows(db: Any) -> list[IdempotencyKey]:
    with db.session() as session:
        return list(session.scalars(sa.select(IdempotencyKey).order_by(IdempotencyKey.id)))


@pytest.fixture
def live(app: Any) -> Iterator[str]:
    with serve(app) as url:
        yield url


def test_same_key_and_body_replays_the_answer_byte_for_byte(
    client: Any, db: Any, api_key: str
) -> None:
    first = post(client, api_key, "order-1")
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    # Same request, other JSON spelling (key order): still "the same body".
    reordered = dict(reversed(list(GOOD_BODY.items())))
    second = post(client, api_key, "order-1", reordered)
    assert second.status_code == 202
    assert second.get_data() == first.get_data()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert len(job_rows(db)) == 1
    with db.session() as session:
        holds = session.scalar(
            sa.select(sa.func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "hold")
        )
    assert holds == 1  # charged once: the music-2.6 model is priced
    (row,) = key_rows(db)
    assert (row.state, row.status_code, row.key) == ("done", 202, "order-1")


def test_same_key_with_another_body_is_422(client: Any, db: Any, api_key: str) -> None:
    assert post(client, api_key, "k").status_code == 202
    other = post(client, api_key, "k", {**GOOD_BODY, "prompt": "Something else entirely"})
    assert other.status_code == 422
    error = other.get_json()["error"]
    assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert len(job_rows(db)) == 1


def test_without_a_key_every_post_is_a_new_job(client: Any, db: Any, api_key: str) -> None:
    assert post(client, api_key, None).status_code == 202
    assert post(client, api_key, None).status_code == 202
    assert len(job_rows(db)) == 2
    assert key_rows(db) == []


def test_a_duplicate_during_the_first_requests_wait_replays_its_accepted_answer(
    live: str, db: Any, api_key: str
) -> None:
    answers: dict[str, requests.Response] = {}
    headers = {**auth(api_key), "Idempotency-Key": "slow-1"}

    def first() -> None:
        # No worker: the job stays QUEUED and the request is held the full 3 s.
        answers["first"] = requests.post(
            f"{live}{URL}", json=GOOD_BODY, headers={**headers, "Prefer": "wait=3"}, timeout=30
        )

    thread = threading.Thread(target=first)
    thread.start()
    # The key is committed with the job and its answer, before the wait begins.
    wait_for(lambda: key_rows(db), 10, message="the first request's key")
    concurrent = requests.post(f"{live}{URL}", json=GOOD_BODY, headers=headers, timeout=30)
    thread.join(timeout=30)
    assert concurrent.status_code == 202, concurrent.text
    assert concurrent.headers["Idempotent-Replayed"] == "true"
    assert "Preference-Applied" not in concurrent.headers
    assert answers["first"].status_code == 202
    assert answers["first"].headers["Preference-Applied"] == "wait=3"
    assert concurrent.json()["id"] == answers["first"].json()["id"]
    # Once the first has answered, a retry gets that answer, headers that matter included.
    retry = requests.post(f"{live}{URL}", json=GOOD_BODY, headers=headers, timeout=30)
    assert retry.status_code == 202
    assert retry.content == answers["first"].content
    assert retry.headers["Preference-Applied"] == "wait=3"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(job_rows(db)) == 1


def claimed_earlier(
    db: Any, key: str, *, locked_for: dt.timedelta, fingerprint: str = "0" * 64
) -> None:
    """A key claimed and left unanswered (by a request that died, or by the release before
    keys were committed with their answers), locked for ``locked_for`` from now."""
    now = utcnow()
    with db.transaction() as session:
        org_id = session.scalar(sa.select(ApiKey.org_id))
        session.add(
            IdempotencyKey(
                org_id=org_id,
                key=key,
                fingerprint=fingerprint,
                state="in_progress",
                claim_token="0" * 32,
                created_at=now - dt.timedelta(minutes=1),
                locked_until=now + locked_for,
                expires_at=now + dt.timedelta(hours=24),
            )
        )


def test_a_key_claimed_and_not_yet_answered_is_409(
    app: Any, client: Any, db: Any, api_key: str
) -> None:
    with app.test_request_context(URL, method="POST", json=GOOD_BODY):
        same_request = fingerprint()
    claimed_earlier(db, "held", locked_for=dt.timedelta(minutes=2), fingerprint=same_request)
    busy = post(client, api_key, "held")
    assert busy.status_code == 409, busy.get_json()
    assert busy.get_json()["error"]["code"] == "idempotency_key_in_use"
    assert job_rows(db) == []
    (row,) = key_rows(db)
    assert row.state == "in_progress"  # a refusal about the key is not stored as its answer


def test_racing_first_requests_create_exactly_one_job(live: str, db: Any, api_key: str) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def one() -> None:
        session = requests.Session()
        headers = {**auth(api_key), "Idempotency-Key": "race"}
        barrier.wait()
        response = session.post(f"{live}{URL}", json=GOOD_BODY, headers=headers, timeout=30)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == n
    # The later ones waited on the first's key, then replayed its answer.
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["id"] for r in results}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in results) == 1
    assert len(job_rows(db)) == 1


def test_an_exception_in_the_handler_does_not_leave_the_key_stuck(
    client: Any, db: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intake.store
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Job:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "store", flaky)
    with pytest.raises(RuntimeError):
        post(client, api_key, "retry-me")
    assert key_rows(db) == []
    retry = post(client, api_key, "retry-me")
    assert retry.status_code == 202
    assert "Idempotent-Replayed" not in retry.headers
    assert len(job_rows(db)) == 1


def test_a_5xx_answer_is_not_stored(
    client: Any, db: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intake.store
    calls = {"n": 0}

    def unavailable(*args: Any, **kwargs: Any) -> Job:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ApiError(503, "The service is overloaded; retry.", code="unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "store", unavailable)
    assert post(client, api_key, "k503").status_code == 503
    assert key_rows(db) == []
    assert post(client, api_key, "k503").status_code == 202


def test_a_4xx_answer_is_stored_and_replayed(client: Any, db: Any, api_key: str) -> None:
    body = {**GOOD_BODY, "model": "no-such-model"}
    first = post(client, api_key, "bad-1", body)
    assert first.status_code == 400
    again = post(client, api_key, "bad-1", body)
    assert again.status_code == 400
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    # A schema error (webargs) is stored the same way.
    missing = {k: v for k, v in GOOD_BODY.items() if k != "lyrics"}
    assert post(client, api_key, "bad-2", missing).status_code == 400
    replay = post(client, api_key, "bad-2", missing)
    assert replay.status_code == 400
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert job_rows(db) == []


def test_a_429_is_not_stored_so_a_retry_after_a_top_up_succeeds(client: Any, db: Any) -> None:
    from app.money import ledger
    from app.tenancy.keys import get_or_create_org

    poor = funded_key(db, "poor", amount=0)
    first = post(client, poor, "topup")
    assert first.status_code == 429
    assert first.get_json()["error"]["code"] == "insufficient_quota"
    assert key_rows(db) == []
    with db.transaction() as session:
        ledger.credit(session, get_or_create_org(session, "poor").id, "CNY", 1_000_000)
    assert post(client, poor, "topup").status_code == 202


def test_keys_are_scoped_per_org(client: Any, db: Any, api_key: str, other_key: str) -> None:
    mine = post(client, api_key, "shared-name")
    theirs = post(client, other_key, "shared-name")
    assert mine.status_code == theirs.status_code == 202
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert len(job_rows(db)) == 2
    # Two keys of one org share the org's idempotency keys.
    second_key = funded_key(db, "acme")
    replay = post(client, second_key, "shared-name")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["id"] == mine.get_json()["id"]


@pytest.mark.parametrize("bad", ["", "   ", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_400(client: Any, db: Any, api_key: str, bad: str) -> None:
    response = client.post(
        URL,
        json=GOOD_BODY,
        headers={**auth(api_key), "Idempotency-Key": bad.encode().decode("latin-1")},
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert job_rows(db) == []


def test_the_longest_key_and_the_structured_field_form(client: Any, db: Any, api_key: str) -> None:
    assert post(client, api_key, "x" * 255).status_code == 202
    # The IETF draft's quoted form names the same key as Stripe's bare form.
    first = post(client, api_key, "8e03978e-40d5-43e8-bc93-6894a57f9324")
    quoted = post(client, api_key, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    assert quoted.headers["Idempotent-Replayed"] == "true"
    assert quoted.get_data() == first.get_data()


def test_a_claim_whose_request_died_is_taken_over(client: Any, db: Any, api_key: str) -> None:
    # Its lock ran out a while ago.
    claimed_earlier(db, "orphan", locked_for=-dt.timedelta(seconds=30))
    response = post(client, api_key, "orphan")
    assert response.status_code == 202
    assert "Idempotent-Replayed" not in response.headers
    (row,) = key_rows(db)
    assert row.state == "done"
    assert post(client, api_key, "orphan").headers["Idempotent-Replayed"] == "true"
    assert len(job_rows(db)) == 1


def test_expired_keys_count_as_new_and_are_purged(client: Any, db: Any, api_key: str) -> None:
    first = post(client, api_key, "old")
    post(client, api_key, "young")
    with db.transaction() as session:
        session.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    # Past its expiry and not yet purged: a new request, a new job.
    again = post(client, api_key, "old")
    assert again.status_code == 202
    assert again.get_json()["id"] != first.get_json()["id"]
    with db.transaction() as session:
        session.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert store.purge_expired(db, batch=1) == 1
    assert [r.key for r in key_rows(db)] == ["young"]
    assert store.purge_expired(db) == 0


def test_the_scheduler_sends_the_purge(settings: Any) -> None:
    from workers import make_celery
    from workers.scheduler import IDEMPOTENCY_PURGE_SECONDS, Scheduler

    periodic = Scheduler(make_celery(settings)).periodic
    purge = [p for p in periodic if p.task == "chorus.purge_idempotency_keys"]
    assert [p.interval for p in purge] == [IDEMPOTENCY_PURGE_SECONDS]


def test_the_purge_task_deletes_expired_keys(db: Any, api_key: str, client: Any) -> None:
    from workers import make_celery
    from workers.tasks import purge_idempotency_keys

    post(client, api_key, "to-purge")
    with db.transaction() as session:
        session.execute(
            sa.update(IdempotencyKey).values(expires_at=utcnow() - dt.timedelta(minutes=1))
        )
    celery = make_celery(db.settings)
    try:
        assert purge_idempotency_keys.apply().get() == 1
    finally:
        celery.close()
    assert key_rows(db) == []


def test_the_idempotency_key_is_documented_as_a_header(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    responses = spec["paths"]["/v1/music/generations"]["post"]["responses"]
    assert {"201", "202", "409", "422"} <= set(responses)

"""The key's statements (``app.idempotency.store``) called directly, on real Postgres: two
requests with one key, each in its own transaction, as two web threads run them."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from app.db import Database, utcnow
from app.idempotency import store
from app.idempotency.models import IdempotencyKey
from app.tenancy.keys import get_or_create_org
from tests.conftest import commit_once_blocked

DAY, LOCK = dt.timedelta(days=1), dt.timedelta(minutes=2)
ANSWER = (202, b'{"id": "luid_1"}', {"Location": "/v1/music/generations/luid_1"})


@pytest.fixture
def org_id(db: Database) -> int:
    with db.transaction() as session:
        return get_or_create_org(session, "acme").id


def claim(session: sa.orm.Session, org_id: int, fingerprint: str = "f" * 64) -> store.Outcome:
    return store.claim(session, org_id, "k", fingerprint, ttl=DAY, lock=LOCK)


def test_nothing_of_a_claim_is_seen_before_its_commit(db: Database, org_id: int) -> None:
    with db.session() as first:
        claimed = claim(first, org_id)
        assert isinstance(claimed, store.Claimed)
        assert store.record(first, claimed, *ANSWER)
        with db.engine.connect() as other:
            assert store.lookup(other, org_id, "k", "f" * 64) is None
        first.rollback()
    with db.transaction() as session:
        assert isinstance(claim(session, org_id), store.Claimed)  # free again


@pytest.mark.parametrize("expired", [False, True])
def test_a_second_claim_waits_for_the_first_then_replays_its_answer(
    db: Database, org_id: int, expired: bool
) -> None:
    if expired:
        # An earlier use of the key, past its expiry: both requests take it over at once.
        with db.transaction() as session:
            old = claim(session, org_id)
            assert isinstance(old, store.Claimed)
            store.record(session, old, 400, b"old", {})
            session.execute(sa.update(IdempotencyKey).values(expires_at=utcnow()))
    first = db.session()
    first.begin()
    claimed = claim(first, org_id)
    assert isinstance(claimed, store.Claimed)
    assert store.record(first, claimed, *ANSWER)
    outcomes: list[store.Outcome] = []

    def second() -> None:
        with db.transaction() as session:
            outcomes.append(claim(session, org_id))

    commit_once_blocked(db, first, second)
    assert outcomes == [store.Replay(*ANSWER)]


def test_a_second_claim_for_another_request_is_a_mismatch(db: Database, org_id: int) -> None:
    with db.transaction() as session:
        claimed = claim(session, org_id)
        assert isinstance(claimed, store.Claimed)
        store.record(session, claimed, *ANSWER)
    with db.transaction() as session:
        assert claim(session, org_id, fingerprint="0" * 64) == store.Mismatch()
    with db.engine.connect() as conn:
        assert store.lookup(conn, org_id, "k", "0" * 64) == store.Mismatch()
        assert store.lookup(conn, org_id, "k", "f" * 64) == store.Replay(*ANSWER)

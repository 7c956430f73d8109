"""POST /v1/lyrics/generations against the simulator's MiniMax lyrics helper, on real Postgres:
the answer, the money (held, then captured or released, once), Idempotency-Key, failures."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog.models import AccountState
from app.db import Database, utcnow
from app.jobs import lyrics
from app.jobs.models import LyricsGeneration
from app.money import ledger
from app.money.models import LedgerEntry
from app.tenancy.keys import get_or_create_org, hash_key
from app.tenancy.models import ApiKey
from config import load_settings
from tests.conftest import CREDIT, auth, funded_key, sim_record

URL = "/v1/lyrics/generations"
PRICE = 10  # lyrics-2.6 in the default catalog, in fen
BODY = {"model": "lyrics-2.6", "prompt": "A summer road trip"}


@pytest.fixture
def client(env: dict[str, str], db: Database, sim: str, catalog: Any) -> Iterator[Any]:
    from app.web import create_app

    settings = load_settings({**env, "SIM_URL": sim, "LYRICS_TIMEOUT_SECONDS": "1.5"})
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app.test_client()


def calls(sim: str) -> list[dict[str, Any]]:
    return [r for r in sim_record(sim)["requests"] if r["path"] == "/v1/lyrics_generation"]


def money(db: Database, org: str = "acme") -> tuple[ledger.Totals, list[tuple[str, str, int]]]:
    with db.session() as session:
        org_id = get_or_create_org(session, org).id
        totals = ledger.balance(session, org_id, "CNY")
        assert ledger.recompute(session, org_id, "CNY") == totals  # the ledger agrees
        entries = session.execute(
            sa.select(LedgerEntry.job_id, LedgerEntry.kind, LedgerEntry.amount)
            .where(LedgerEntry.org_id == org_id, LedgerEntry.job_id.is_not(None))
            .order_by(LedgerEntry.id)
        ).all()
    return totals, [tuple(e) for e in entries]


def rows(db: Database) -> list[LyricsGeneration]:
    with db.session() as session:
        return list(session.scalars(sa.select(LyricsGeneration).order_by(LyricsGeneration.id)))


def test_success_answers_the_lyrics_and_charges_once(
    client: Any, db: Database, sim: str, api_key: str
) -> None:
    response = client.post(URL, json={**BODY, "title": "Open Road"}, headers=auth(api_key))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["object"] == "lyrics.generation"
    assert body["id"].startswith("lyr_")
    assert body["model"] == "lyrics-2.6"
    assert body["title"] == "Open Road"
    assert body["style_tags"] == "Pop, Upbeat"
    assert "A summer road trip" in body["lyrics"]
    assert body["cost"] == {"amount": PRICE, "currency": "CNY"}
    assert isinstance(body["created"], int)

    totals, entries = money(db)
    assert totals == ledger.Totals(CREDIT - PRICE, 0)
    assert entries == [(body["id"], "hold", -PRICE), (body["id"], "capture", 0)]
    (row,) = rows(db)
    assert (row.status, row.account_id) == ("succeeded", "sim-minimax")
    assert row.result == {k: body[k] for k in ("title", "style_tags", "lyrics")}
    assert len(calls(sim)) == 1


def test_edit_mode_needs_lyrics(client: Any, db: Database, sim: str, api_key: str) -> None:
    edit = {"model": "lyrics-2.6", "mode": "edit", "prompt": "more hopeful"}
    missing = client.post(URL, json=edit, headers=auth(api_key))
    assert missing.status_code == 400
    assert missing.get_json()["error"]["param"] == "lyrics"
    done = client.post(URL, json={**edit, "lyrics": "[Verse]\nOpen road"}, headers=auth(api_key))
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["lyrics"].startswith("[Verse]\nOpen road")
    assert len(calls(sim)) == 1  # the refused one never went upstream


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "lyrics-2.6"}, "prompt", "missing_required_parameter"),
        ({**BODY, "mode": "rhyme"}, "mode", "invalid_value"),
        ({**BODY, "temperature": 1}, "temperature", "unknown_parameter"),
        ({**BODY, "model": "music-2.6"}, "model", "model_not_found"),  # not a lyrics model
        ({**BODY, "model": "lyrics-9"}, "model", "model_not_found"),
        ({**BODY, "prompt": "x" * 2001}, "prompt", "invalid_value"),
    ],
)
def test_bad_input_is_400_and_free(
    client: Any, db: Database, sim: str, api_key: str, body: Any, param: str, code: str
) -> None:
    response = client.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert money(db)[0] == ledger.Totals(CREDIT, 0)
    assert calls(sim) == []


def test_an_idempotent_retry_is_replayed_and_charged_once(
    client: Any, db: Database, sim: str, api_key: str
) -> None:
    headers = {**auth(api_key), "Idempotency-Key": "lyrics-1"}
    first = client.post(URL, json=BODY, headers=headers)
    again = client.post(URL, json=BODY, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(calls(sim)) == 1
    assert money(db)[0] == ledger.Totals(CREDIT - PRICE, 0)
    reused = client.post(URL, json={**BODY, "prompt": "other"}, headers=headers)
    assert reused.status_code == 422


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("[sim:base-resp=2013]", 502, "invalid_request"),
        ("[sim:base-resp=1008]", 502, "upstream_out_of_credits"),
        ("[sim:base-resp=1000]", 503, "upstream_unavailable"),
        ("[sim:http=503]", 503, "upstream_unavailable"),
        ("[sim:http=429]", 503, "upstream_rate_limited"),
        ("[sim:garbage]", 502, "upstream_invalid_response"),
        ("[sim:base-resp=1026]", 400, "content_moderated"),
    ],
)
def test_an_upstream_failure_releases_the_hold(
    client: Any, db: Database, sim: str, api_key: str, marker: str, status: int, code: str
) -> None:
    response = client.post(URL, json={**BODY, "prompt": f"road {marker}"}, headers=auth(api_key))
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code
    assert "sim" not in error["message"] and "127.0.0.1" not in error["message"]
    totals, entries = money(db)
    assert totals == ledger.Totals(CREDIT, 0)
    (row,) = rows(db)
    assert (row.status, row.error_code) == ("failed", code)
    assert entries == [(row.id, "hold", -PRICE), (row.id, "release", PRICE)]
    assert len(calls(sim)) == 1


def test_a_failed_call_can_be_retried_with_its_key(
    client: Any, db: Database, sim: str, api_key: str
) -> None:
    headers = {**auth(api_key), "Idempotency-Key": "lyrics-2"}
    body = {**BODY, "prompt": "road [sim:http=503]"}
    assert client.post(URL, json=body, headers=headers).status_code == 503
    # Not replayed: a 503 is worth trying again, and the key was let go.
    retry = client.post(URL, json=body, headers=headers)
    assert retry.status_code == 503
    assert "Idempotent-Replayed" not in retry.headers
    assert len(calls(sim)) == 2
    assert money(db)[0] == ledger.Totals(CREDIT, 0)


def test_a_slow_upstream_is_cut_at_the_timeout(
    client: Any, db: Database, sim: str, api_key: str
) -> None:
    started = time.monotonic()
    response = client.post(
        URL, json={**BODY, "prompt": "road [sim:latency=4]"}, headers=auth(api_key)
    )
    took = time.monotonic() - started
    assert response.status_code == 504, response.get_json()
    assert response.get_json()["error"]["code"] == "upstream_timeout"
    assert 1.4 < took < 3.5  # LYRICS_TIMEOUT_SECONDS=1.5, not the sim's 4 s
    assert money(db)[0] == ledger.Totals(CREDIT, 0)


def test_insufficient_balance_is_refused_before_any_call(
    client: Any, db: Database, sim: str
) -> None:
    poor = funded_key(db, "poor", amount=PRICE - 1)
    response = client.post(URL, json=BODY, headers=auth(poor))
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "insufficient_quota"
    assert calls(sim) == []
    assert rows(db) == []
    assert money(db, "poor")[0] == ledger.Totals(PRICE - 1, 0)


def test_an_open_breaker_keeps_the_call_from_its_account(
    client: Any, db: Database, sim: str, api_key: str
) -> None:
    with db.transaction() as session:
        session.add(
            AccountState(
                account_id="sim-minimax",
                failures=5,
                open_until=utcnow() + dt.timedelta(minutes=1),
                updated_at=utcnow(),
            )
        )
    response = client.post(URL, json=BODY, headers=auth(api_key))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "upstream_unavailable"
    assert calls(sim) == []
    assert money(db) == (ledger.Totals(CREDIT, 0), [])  # nothing was even held
    assert rows(db) == []


def test_an_abandoned_call_is_released_once(db: Database, catalog: Any, api_key: str) -> None:
    # A web process that died mid-call left its row pending and its price held.
    request = lyrics.LyricsRequest("lyrics-2.6", "write_full_song", "x", None, None)
    with db.transaction() as session:
        key = session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(api_key))).one()
        row_id = lyrics.begin(session, key, lyrics.find(session, request)).id
        session.execute(
            sa.update(LyricsGeneration)
            .where(LyricsGeneration.id == row_id)
            .values(created_at=utcnow() - lyrics.ABANDONED_AFTER - dt.timedelta(seconds=1))
        )
    assert money(db)[0] == ledger.Totals(CREDIT - PRICE, PRICE)
    assert lyrics.release_abandoned(db) == 1
    assert lyrics.release_abandoned(db) == 0
    assert money(db)[0] == ledger.Totals(CREDIT, 0)
    # The call's late end changes nothing now.
    with db.transaction() as session:
        assert not lyrics.finish(session, row_id, result={"lyrics": "x"}, account_id="sim-minimax")
    assert money(db)[0] == ledger.Totals(CREDIT, 0)

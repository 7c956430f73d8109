"""What a submit does before it writes: every header read, the balance checked before any
reference audio is fetched; a refusal there leaves no job, no hold and no key."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.api.jobs import views
from app.catalog.models import Model
from tests.api.test_idempotency import URL, key_rows, post
from tests.audio import Server
from tests.conftest import ACTIVITY, GOOD_BODY, auth, backends, funded_key, job_rows
from tests.serving import serve

pytestmark = pytest.mark.usefixtures("catalog")


def with_reference(url: str) -> dict[str, Any]:
    return {**GOOD_BODY, "model": "minimax-music", "reference_audio_url": url}


@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
@pytest.mark.parametrize("idem", [None, "poor-1"])
def test_an_org_that_cannot_pay_never_makes_chorus_fetch_its_reference(
    client: Any, db: Any, audio_server: Server, idem: str | None
) -> None:
    audio_server.hits.clear()
    poor = funded_key(db, "poor", amount=0)
    refused = post(client, poor, idem, with_reference(f"{audio_server.url}/song.wav"))
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["error"]["code"] == "insufficient_quota"
    assert audio_server.hits == []
    assert job_rows(db) == [] and key_rows(db) == []
    # An org that can pay does get its reference fetched (and this one is too short).
    rich = funded_key(db, "rich")
    fetched = post(client, rich, idem, with_reference(f"{audio_server.url}/song.wav"))
    assert fetched.status_code == 400, fetched.get_json()
    assert fetched.get_json()["error"]["param"] == "reference_audio_url"
    assert audio_server.hits == ["/song.wav"]


@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_the_balance_check_counts_the_minimum_balance(
    client: Any, db: Any, audio_server: Server
) -> None:
    """Enough for the price but not above the model's minimum: still no fetch."""
    with db.transaction() as session:
        session.execute(
            sa.update(Model).where(Model.name == "minimax-music").values(min_balance=1_000)
        )
    audio_server.hits.clear()
    just_enough = funded_key(db, "thin", amount=1_000)
    refused = post(client, just_enough, "thin-1", with_reference(f"{audio_server.url}/song.wav"))
    assert refused.status_code == 429, refused.get_json()
    assert audio_server.hits == []
    above = funded_key(db, "thick", amount=1_001)
    assert post(client, above, "thick-1", with_reference(f"{audio_server.url}/song.wav"))
    assert audio_server.hits == ["/song.wav"]


@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_a_reference_fetch_holds_no_database_connection(app: Any, db: Any, api_key: str) -> None:
    asked, answer = threading.Event(), threading.Event()

    @Request.application
    def slow(_request: Request) -> Response:
        asked.set()
        answer.wait(30)
        return Response(b"not a sound" * 100, mimetype="audio/wav")

    reference = make_server("127.0.0.1", 0, slow, threaded=True)
    threading.Thread(target=reference.serve_forever, daemon=True).start()
    answers: list[requests.Response] = []
    body = with_reference(f"http://127.0.0.1:{reference.server_port}/slow.wav")
    try:
        with serve(app) as url:
            sender = threading.Thread(
                target=lambda: answers.append(
                    requests.post(
                        f"{url}{URL}",
                        json=body,
                        headers={**auth(api_key), "Idempotency-Key": "slow-ref"},
                        timeout=60,
                    )
                )
            )
            sender.start()
            assert asked.wait(30)
            during_fetch = backends(db, ACTIVITY.c.state.like("idle in transaction%"))
            answer.set()
            sender.join(timeout=60)
    finally:
        answer.set()
        reference.shutdown()
    assert during_fetch == 0
    assert answers[0].status_code == 400, answers[0].text
    assert answers[0].json()["error"]["param"] == "reference_audio_url"


# Python reads no integer of over 4,300 digits: the header must be read (as the cap) before
# anything is stored, not fail afterwards.
HUGE_WAIT = "wait=" + "9" * 5000


@pytest.mark.env(WAIT_MAX_WAITERS="0")
def test_a_huge_prefer_wait_with_a_key_is_one_job_answered_at_once(
    client: Any, db: Any, api_key: str
) -> None:
    # No waiting slot in this process: the answer comes at once, as without the header.
    first = post(client, api_key, "huge-wait", Prefer=HUGE_WAIT)
    assert first.status_code == 202, first.get_json()
    assert "Preference-Applied" not in first.headers
    again = post(client, api_key, "huge-wait", Prefer=HUGE_WAIT)
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [job.id for job in job_rows(db)] == [first.get_json()["id"]]


def test_headers_are_read_before_anything_is_written(
    client: Any, db: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(_headers: Any) -> int:
        raise ValueError("a header that cannot be read")

    monkeypatch.setattr(views, "requested_wait", unreadable)
    with pytest.raises(ValueError):
        post(client, api_key, "unread", Prefer="wait=5")
    assert job_rows(db) == [] and key_rows(db) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Idempotency-Key": "tab\there"}, 400),
        ({"Idempotency-Key": "x" * 300}, 400),
        ({"Idempotency-Key": "ok-key", "Content-Type": "text/plain"}, 400),
        ({"Idempotency-Key": "ok-key", "Content-Type": "application/json; charset=utf-7"}, 400),
    ],
)
def test_bad_headers_with_a_key_are_4xx_and_write_no_job(
    client: Any, db: Any, api_key: str, headers: dict[str, str], status: int
) -> None:
    response = client.post(
        URL,
        data=b'{"model": "music-2.6"}',
        headers={**auth(api_key), "Content-Type": "application/json", **headers},
    )
    assert response.status_code == status, response.get_json()
    assert job_rows(db) == []

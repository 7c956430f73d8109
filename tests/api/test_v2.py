"""``/v2/generate/audio``, the AIMLAPI-compatible surface (CONTRACT §1b): shapes, status words,
and every error class in AIMLAPI's body and status codes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database, utcnow
from app.jobs.models import Job
from app.jobs.status import JobStatus
from app.tenancy.models import ApiKey
from tests.api.test_reference_audio import files, gate, wav  # noqa: F401 - fixtures used
from tests.conftest import GOOD_BODY, auth, funded_key, job_rows

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v2/generate/audio"
LYRICS = "[Verse]\nStreetlights flicker, the night breeze sighs\n[Chorus]\nIn this small cafe"
BODY = {
    "model": "minimax/music-1.5",
    "prompt": "A calm and soothing instrumental music with gentle piano and soft strings.",
    "lyrics": LYRICS,
}
ERROR_FIELDS = {"message", "path", "requestId", "statusCode", "timestamp"}


def aimlapi_error(response: Any, status: int) -> str:
    """Assert ``response`` is AIMLAPI's error body with ``status``; return its message."""
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == ERROR_FIELDS, body
    assert body["statusCode"] == status
    assert body["path"] == response.request.path
    assert body["requestId"] and body["timestamp"].endswith("Z")
    message: str = body["message"]
    assert message
    return message


def submit(client: Any, key: str | None, body: Any = None, **headers: str) -> Any:
    hdrs = {**(auth(key) if key else {}), **headers}
    return client.post(URL, json=BODY if body is None else body, headers=hdrs)


def read(client: Any, key: str, generation_id: str) -> Any:
    return client.get(URL, query_string={"generation_id": generation_id}, headers=auth(key))


def set_row(db: Database, job_id: str, **values: Any) -> None:
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))


# ------------------------------------------------------------------ the happy path


def test_submit_answers_201_with_the_id_queued_and_the_job_is_a_v2_job(
    client: Any, db: Database, api_key: str
) -> None:
    response = submit(client, api_key)
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["id", "status"] and body["status"] == "queued"
    assert body["id"].startswith("luid_")

    (row,) = job_rows(db)
    assert (row.id, row.surface, row.model_name) == (body["id"], "v2", "minimax/music-1.5")
    assert row.category_id == row.catelogid == "music_gen"
    assert row.request == {"prompt": BODY["prompt"], "lyrics": LYRICS}
    assert row.price == 50  # the default catalog's price, held at submit

    polled = read(client, api_key, body["id"])
    assert polled.status_code == 200
    assert polled.headers["Cache-Control"] == "no-store"
    assert polled.get_json() == {
        "id": body["id"],
        "status": "queued",
        "audio_file": None,
        "error": None,
    }
    # The same job on /v1, in /v1's words.
    v1 = client.get(f"/v1/music/generations/{body['id']}", headers=auth(api_key)).get_json()
    assert (v1["status"], v1["catelogid"], v1["cost"]["state"]) == ("QUEUED", "music_gen", "held")


def test_a_v1_job_is_readable_on_v2(client: Any, api_key: str) -> None:
    created = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202
    polled = read(client, api_key, created.get_json()["id"])
    assert polled.status_code == 200 and polled.get_json()["status"] == "queued"


@pytest.mark.env(DEFAULT_MUSIC_CATEGORY="Music generation")
def test_the_default_category_is_a_setting_matched_by_id_or_name(
    client: Any, db: Database, api_key: str
) -> None:
    assert submit(client, api_key).status_code == 201
    (row,) = job_rows(db)
    assert (row.category_id, row.catelogid) == ("music_gen", "Music generation")


@pytest.mark.env(DEFAULT_MUSIC_CATEGORY="no_such_category")
def test_a_model_outside_the_default_category_is_a_400(client: Any, api_key: str) -> None:
    message = aimlapi_error(submit(client, api_key), 400)
    assert "minimax/music-1.5" in message


def test_audio_sample_rate_is_read_as_the_sample_rate(
    client: Any, db: Database, api_key: str
) -> None:
    setting = {"audio_sample_rate": 16000, "bitrate": 32000, "format": "mp3"}
    assert submit(client, api_key, {**BODY, "audio_setting": setting}).status_code == 201
    (row,) = job_rows(db)
    assert row.request["audio_setting"] == {"sample_rate": 16000, "bitrate": 32000, "format": "mp3"}


@pytest.mark.env(ALLOW_PRIVATE_URLS="1")
def test_minimax_music_takes_a_checked_reference_track(
    client: Any,
    db: Database,
    api_key: str,
    files: str,  # noqa: F811 - the fixture
) -> None:
    body = {"model": "minimax-music", "prompt": "##Side by side, through thick and thin##"}
    refused = submit(client, api_key, body)
    assert "reference_audio_url" in aimlapi_error(refused, 400)
    short = submit(client, api_key, {**body, "reference_audio_url": f"{files}/short.wav"})
    assert "longer than 15 seconds" in aimlapi_error(short, 400)
    assert job_rows(db) == []

    accepted = submit(client, api_key, {**body, "reference_audio_url": f"{files}/long.wav"})
    assert accepted.status_code == 201, accepted.get_json()
    (row,) = job_rows(db)
    assert row.request["reference_audio_url"] == f"{files}/long.wav"
    assert "lyrics" not in row.request


# ------------------------------------------------------------------ status words


def store_audio(app: Any, job_id: str) -> str:
    storage = app.extensions["chorus"].storage
    key = f"{job_id}.wav"
    target = storage.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(wav(1.0))
    return key


@pytest.mark.parametrize(
    ("status", "word"),
    [
        (JobStatus.QUEUED, "queued"),
        (JobStatus.RUNNING, "generating"),
        (JobStatus.SUCCEEDED, "completed"),
        (JobStatus.FAILED, "error"),
        (JobStatus.CANCELLED, "error"),
    ],
)
def test_each_job_status_reads_as_aimlapi_s_word(
    app: Any,
    client: Any,
    db: Database,
    api_key: str,
    status: JobStatus,
    word: str,
) -> None:
    job_id = submit(client, api_key).get_json()["id"]
    values: dict[str, Any] = {"status": status}
    if status is JobStatus.SUCCEEDED:
        values.update(audio_key=store_audio(app, job_id), audio_format="wav")
    if status is JobStatus.FAILED:
        values.update(error_code="upstream_failed", error_message="GenerationError: it broke")
    set_row(db, job_id, **values)

    body = read(client, api_key, job_id).get_json()
    assert list(body) == ["id", "status", "audio_file", "error"]
    assert (body["id"], body["status"]) == (job_id, word)
    if status is JobStatus.SUCCEEDED:
        assert body["error"] is None
        assert list(body["audio_file"]) == ["url"]
        # Chorus's own signed link, and it serves the track.
        link = body["audio_file"]["url"]
        assert "/v1/files/audio/" in link
        download = client.get(link.replace("http://localhost", ""))
        assert download.status_code == 200 and download.mimetype == "audio/wav"
        assert download.data[:4] == b"RIFF"
    else:
        assert body["audio_file"] is None
    if status is JobStatus.FAILED:
        assert body["error"] == {"name": "upstream_failed", "message": "GenerationError: it broke"}
    elif status is JobStatus.CANCELLED:
        assert body["error"]["name"] == "cancelled" and body["error"]["message"]
    elif status is not JobStatus.SUCCEEDED:
        assert body["error"] is None


def test_a_failed_job_without_a_message_still_has_an_error_object(
    client: Any, db: Database, api_key: str
) -> None:
    job_id = submit(client, api_key).get_json()["id"]
    set_row(db, job_id, status=JobStatus.FAILED, error_code=None, error_message=None)
    error = read(client, api_key, job_id).get_json()["error"]
    assert error["name"] and error["message"]


# ------------------------------------------------------------------ 401, 403


@pytest.mark.parametrize(
    "headers",
    [{}, auth("chs_unknown"), {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    ids=["none", "unknown", "not-bearer", "empty"],
)
def test_a_missing_or_unknown_key_is_401(client: Any, headers: dict[str, str]) -> None:
    for response in (
        client.post(URL, json=BODY, headers=headers),
        client.get(URL, query_string={"generation_id": "luid_x"}, headers=headers),
    ):
        assert "API key" in aimlapi_error(response, 401)


def test_a_revoked_key_is_401_from_the_next_request(
    client: Any, db: Database, api_key: str
) -> None:
    assert submit(client, api_key).status_code == 201
    with db.transaction() as session:
        session.execute(sa.update(ApiKey).values(revoked_at=utcnow()))
    aimlapi_error(submit(client, api_key), 401)


def test_too_little_balance_is_403_out_of_credits_and_leaves_nothing(
    client: Any, db: Database
) -> None:
    poor = funded_key(db, "poor", amount=49)  # the model costs 50
    message = aimlapi_error(submit(client, poor), 403)
    assert "run out of credits" in message
    assert job_rows(db) == []
    balance = client.get("/v1/balance", headers=auth(poor)).get_json()
    assert balance["data"][0]["available"] == 49, balance


# ------------------------------------------------------------------ 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in BODY.items() if k != "model"}, "model"),
        ({**BODY, "model": ""}, "model"),
        ({k: v for k, v in BODY.items() if k != "prompt"}, "prompt"),
        ({**BODY, "prompt": "   "}, "prompt"),
        ({**BODY, "prompt": 42}, "prompt"),
        ({**BODY, "prompt": "short"}, "prompt"),  # minimax/music-1.5: 10 to 300 characters
        ({**BODY, "prompt": "x" * 301}, "prompt"),
        ({k: v for k, v in BODY.items() if k != "lyrics"}, "lyrics"),
        ({**BODY, "lyrics": ""}, "lyrics"),
        ({**BODY, "lyrics": "la"}, "lyrics"),
        ({**BODY, "lyrics": "x" * 3001}, "lyrics"),
        ({**BODY, "lyrics": "a\x00b" * 5}, "lyrics"),
        ({**BODY, "model": "no-such-model"}, "no-such-model"),
        ({**BODY, "model": "music-2.6", "reference_audio_url": "https://x.test/a.wav"}, "ref"),
        ({**BODY, "reference_audio_url": "ftp://x.test/a.wav"}, "reference_audio_url"),
        ({**BODY, "audio_setting": {"sample_rate": 8000}}, "audio_setting.sample_rate"),
        ({**BODY, "audio_setting": {"bitrate": "fast"}}, "audio_setting.bitrate"),
        ({**BODY, "audio_setting": {"format": "ogg"}}, "audio_setting.format"),
        ({**BODY, "audio_setting": {"channel": 2}}, "audio_setting.channel"),
        (
            {**BODY, "audio_setting": {"sample_rate": 16000, "audio_sample_rate": 44100}},
            "audio_setting.audio_sample_rate",
        ),
        ({**BODY, "audio_setting": "loud"}, "audio_setting"),
        ({**BODY, "is_instrumental": True}, "is_instrumental"),
        ({**BODY, "catelogid": "music_gen"}, "catelogid"),
        ([BODY], "JSON object"),
        ("a string", "JSON object"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_leaves_nothing(
    client: Any, db: Database, api_key: str, body: Any, field: str
) -> None:
    message = aimlapi_error(submit(client, api_key, body), 400)
    assert message.startswith("Body validation error!"), message
    expected = "reference_audio_url" if field == "ref" else field
    assert expected in message, message
    assert job_rows(db) == []


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"\xff\xfe", b'{"model": "minimax/music-1.5", "prompt": '],
)
def test_malformed_json_is_400_never_500(
    client: Any, db: Database, api_key: str, raw: bytes
) -> None:
    response = client.post(
        URL, data=raw, headers={**auth(api_key), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    aimlapi_error(response, 400)
    assert job_rows(db) == []


@pytest.mark.parametrize("query", [{}, {"generation_id": ""}])
def test_a_poll_without_a_generation_id_is_400(
    client: Any, api_key: str, query: dict[str, str]
) -> None:
    response = client.get(URL, query_string=query, headers=auth(api_key))
    message = aimlapi_error(response, 400)
    assert message.startswith("Query validation error!") and "generation_id" in message


def test_a_body_over_the_size_limit_is_413(client: Any, db: Database, api_key: str) -> None:
    body = {**BODY, "lyrics": "x" * 1_100_000}
    aimlapi_error(submit(client, api_key, body), 413)
    assert job_rows(db) == []


# ------------------------------------------------------------------ 404, 405


def test_unknown_and_foreign_generation_ids_are_the_same_404(
    client: Any, api_key: str, other_key: str
) -> None:
    mine = submit(client, api_key).get_json()["id"]
    assert read(client, api_key, mine).status_code == 200
    foreign = aimlapi_error(read(client, other_key, mine), 404)
    unknown = aimlapi_error(read(client, other_key, "luid_01m7zfqqz9pe65sjwf37qvarnj"), 404)
    assert foreign.replace(mine, "ID") == unknown.replace("luid_01m7zfqqz9pe65sjwf37qvarnj", "ID")
    # AIMLAPI's own ids look like this; to Chorus they are simply unknown.
    aimlapi_error(read(client, api_key, "906aec79-1d2c-4f4e-9d55-0d2f7e1f6a11:minimax-music"), 404)
    aimlapi_error(read(client, api_key, "x" * 500), 404)


def test_unknown_routes_and_methods_answer_in_aimlapi_s_shape(client: Any, api_key: str) -> None:
    aimlapi_error(client.get("/v2/generate/video", headers=auth(api_key)), 404)
    aimlapi_error(client.get("/v2", headers=auth(api_key)), 404)
    for method in ("delete", "put", "patch"):
        response = getattr(client, method)(URL, headers=auth(api_key))
        aimlapi_error(response, 405)
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    # /v1 keeps OpenAI's shape.
    v1 = client.get("/v1/nope", headers=auth(api_key))
    assert v1.status_code == 404 and set(v1.get_json()) == {"error"}


# ------------------------------------------------------------------ 429


@pytest.mark.env(RATE_LIMIT="3 per minute")
def test_over_the_rate_limit_is_429_with_retry_after(
    client: Any, api_key: str, other_key: str
) -> None:
    job_id = submit(client, api_key).get_json()["id"]
    assert read(client, api_key, job_id).status_code == 200
    assert read(client, api_key, job_id).status_code == 200
    refused = read(client, api_key, job_id)
    aimlapi_error(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    # The budget is the key's, shared with /v1, which answers in its own shape.
    v1 = client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key))
    assert v1.status_code == 429 and v1.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert submit(client, other_key).status_code == 201


@pytest.mark.env(ORG_MAX_ACTIVE_JOBS="1")
def test_too_many_active_jobs_is_429(client: Any, db: Database, api_key: str) -> None:
    assert submit(client, api_key).status_code == 201
    refused = submit(client, api_key)
    assert "Too many jobs" in aimlapi_error(refused, 429)
    assert refused.headers["Retry-After"]
    assert len(job_rows(db)) == 1


def test_timestamps_are_now(client: Any) -> None:
    body = client.post(URL, json=BODY).get_json()
    stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert abs((utcnow() - stamp).total_seconds()) < 60


def test_an_idempotency_key_replays_the_v2_answer(client: Any, db: Database, api_key: str) -> None:
    first = submit(client, api_key, **{"Idempotency-Key": "v2-order-1"})
    again = submit(client, api_key, **{"Idempotency-Key": "v2-order-1"})
    assert first.status_code == again.status_code == 201
    assert again.get_data() == first.get_data()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(job_rows(db)) == 1
    other = submit(
        client, api_key, {**BODY, "prompt": "another song"}, **{"Idempotency-Key": "v2-order-1"}
    )
    assert aimlapi_error(other, 422)
    assert len(job_rows(db)) == 1

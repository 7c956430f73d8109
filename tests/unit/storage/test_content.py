"""``/content``, the signed link and hex output, on the local folder and on S3 (moto)."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from itsdangerous import TimestampSigner

from app.api.present import audio_url
from app.db import Database, utcnow
from app.jobs.models import Job
from app.storage import AudioStorage, S3Storage
from tests.audio import BIG_WAV, WAV
from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"


@pytest.fixture(params=["local", "s3"])
def env(env: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    """The suite's environment, with audio in a fresh bucket for the S3 run."""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        env.update(s3.env(s3.new_bucket()))
    return env


def storage_of(app: Any) -> AudioStorage:
    storage: AudioStorage = app.extensions["chorus"].storage
    return storage


def submit(client: Any, key: str, **extra: Any) -> str:
    response = client.post(URL, json={**GOOD_BODY, **extra}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def finish(app: Any, db: Database, job_id: str, data: bytes = WAV) -> str:
    """Make the job SUCCEEDED with ``data`` stored, as a worker would."""
    key, info = storage_of(app).store_bytes(data, f"{job_id}-test", max_bytes=10**8)
    with db.transaction() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(
                status="SUCCEEDED",
                finished_at=utcnow(),
                next_action_at=None,
                audio_key=key,
                audio_format=info.format,
                audio_sample_rate=info.sample_rate,
                audio_bitrate=info.bitrate,
                audio_channels=info.channels,
                audio_duration_ms=info.duration_ms,
                audio_size=info.size,
            )
        )
    return key


@pytest.fixture
def done(app: Any, client: Any, db: Database, api_key: str) -> str:
    job_id = submit(client, api_key)
    finish(app, db, job_id)
    return job_id


def path(url: str) -> str:
    return url.replace("http://localhost", "")


# ------------------------------------------------------------------ /content


def test_the_backend_is_the_one_configured(app: Any, env: dict[str, str]) -> None:
    assert isinstance(storage_of(app), S3Storage) == ("STORAGE_URL" in env)


def test_content_streams_the_whole_file(client: Any, api_key: str, done: str) -> None:
    response = client.get(f"{URL}/{done}/content", headers=auth(api_key))
    assert response.status_code == 200
    assert response.mimetype == "audio/wav"
    assert response.content_length == len(WAV)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.data == WAV


def test_the_job_links_to_its_content(client: Any, api_key: str, done: str) -> None:
    job = client.get(f"{URL}/{done}", headers=auth(api_key)).get_json()
    assert job["urls"]["content"] == f"http://localhost{URL}/{done}/content"
    assert job["purged_at"] is None


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, len(WAV) - 1),
        ("bytes=-10", len(WAV) - 10, len(WAV) - 1),
    ],
)
def test_content_answers_a_range_with_206(
    client: Any, api_key: str, done: str, header: str, start: int, end: int
) -> None:
    response = client.get(f"{URL}/{done}/content", headers={**auth(api_key), "Range": header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(WAV)}"
    assert response.content_length == end - start + 1
    assert response.data == WAV[start : end + 1]


def test_a_range_past_the_end_is_416(client: Any, api_key: str, done: str) -> None:
    response = client.get(
        f"{URL}/{done}/content", headers={**auth(api_key), "Range": f"bytes={len(WAV) + 10}-"}
    )
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(WAV)}"


def test_content_needs_the_owners_key(client: Any, api_key: str, other_key: str, done: str) -> None:
    assert client.get(f"{URL}/{done}/content").status_code == 403
    assert client.get(f"{URL}/{done}/content", headers=auth("chs_nope")).status_code == 403
    other = client.get(f"{URL}/{done}/content", headers=auth(other_key))
    unknown = client.get(f"{URL}/luid_01nothinghere/content", headers=auth(api_key))
    assert other.status_code == unknown.status_code == 404
    assert other.get_json()["error"]["code"] == unknown.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("status", ["QUEUED", "RUNNING", "FAILED", "CANCELLED"])
def test_content_of_a_job_without_audio_is_409(
    client: Any, db: Database, api_key: str, status: str
) -> None:
    job_id = submit(client, api_key)
    with db.transaction() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(status=status))
    response = client.get(f"{URL}/{job_id}/content", headers=auth(api_key))
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "audio_not_ready" and status in error["message"]


def test_content_of_a_file_gone_from_storage_is_404(
    app: Any, client: Any, db: Database, api_key: str, done: str
) -> None:
    with db.session() as session:
        key = session.get(Job, done).audio_key  # type: ignore[union-attr]
    storage_of(app).delete(key)
    response = client.get(f"{URL}/{done}/content", headers=auth(api_key))
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "audio_missing"


# ------------------------------------------------------------------ the signed link


def test_the_signed_link_streams_with_ranges(client: Any, api_key: str, done: str) -> None:
    link = client.get(f"{URL}/{done}", headers=auth(api_key)).get_json()["audio"]
    whole = client.get(path(link))
    assert whole.status_code == 200 and whole.data == WAV and whole.mimetype == "audio/wav"
    part = client.get(path(link), headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.data == WAV[4:12]


def test_a_big_file_streams_whole(app: Any, client: Any, db: Database, api_key: str) -> None:
    job_id = submit(client, api_key)
    finish(app, db, job_id, BIG_WAV)
    response = client.get(f"{URL}/{job_id}/content", headers=auth(api_key))
    assert response.status_code == 200 and response.data == BIG_WAV


def test_an_expired_or_tampered_link_is_refused(
    app: Any, client: Any, api_key: str, done: str, settings: Any
) -> None:
    issued = int(time.time()) - settings.audio_link_ttl - 5
    with (
        app.test_request_context(),
        mock.patch.object(TimestampSigner, "get_timestamp", return_value=issued),
    ):
        expired = audio_url(Job(id=done))
    response = client.get(path(expired))
    assert response.status_code == 404
    assert "expired" in response.get_json()["error"]["message"]

    fresh = client.get(f"{URL}/{done}", headers=auth(api_key)).get_json()["audio"]
    assert client.get(path(fresh)).status_code == 200
    assert client.get(path(fresh) + "x").status_code == 404


# ------------------------------------------------------------------ hex


def test_hex_output_holds_the_audio_itself(
    app: Any, client: Any, db: Database, api_key: str
) -> None:
    job_id = submit(client, api_key, output_format="hex")
    finish(app, db, job_id)
    job = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert bytes.fromhex(job["audio"]) == WAV
    assert job["urls"]["audio"].startswith("http://localhost/v1/files/audio/")


@pytest.mark.env(AUDIO_MAX_BYTES="2048")
def test_hex_over_the_cap_falls_back_to_the_link(
    app: Any, client: Any, db: Database, api_key: str
) -> None:
    # Stored under a larger cap than the one in force now: never read whole into memory.
    job_id = submit(client, api_key, output_format="hex")
    finish(app, db, job_id)
    job = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert job["audio"] == job["urls"]["audio"]
    assert client.get(path(job["audio"])).data == WAV


def test_an_unreachable_store_is_503_and_hex_falls_back_to_the_link(
    app: Any, client: Any, db: Database, api_key: str, s3: Any, env: dict[str, str]
) -> None:
    from tests.unit.storage.test_backends import dead_s3

    if "STORAGE_URL" not in env:
        pytest.skip("an S3 outage")
    job_id = submit(client, api_key, output_format="hex")
    finish(app, db, job_id)
    app.extensions["chorus"].storage = dead_s3(s3)
    response = client.get(f"{URL}/{job_id}/content", headers=auth(api_key))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage_unavailable"
    job = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert job["audio"] == job["urls"]["audio"]
    assert client.get(path(job["audio"])).status_code == 503

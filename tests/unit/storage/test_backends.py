"""One contract for both storage backends: the local folder and S3 (moto over real HTTP)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from app.http.downloads import Downloads
from app.storage import (
    AudioError,
    AudioStorage,
    AudioTooLarge,
    LocalStorage,
    S3Storage,
    StorageUnavailable,
    make_storage,
)
from config import load_settings
from tests.audio import BIG_WAV, WAV, Server
from tests.unit.storage.conftest import S3StandIn, s3_settings

MAX = 10 * 1024 * 1024
TIMEOUT = (2.0, 5.0)


def stored(backend: AudioStorage) -> list[str]:
    """Every object the backend holds, temp files included, as keys."""
    if isinstance(backend, LocalStorage):
        root = backend.root
        return sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert isinstance(backend, S3Storage)
    listing = backend.client.list_objects_v2(Bucket=backend.config.bucket)
    return sorted(item["Key"].removeprefix(backend.prefix) for item in listing.get("Contents", []))


def spool_leftovers(backend: AudioStorage) -> list[str]:
    spool = backend.spool_dir if isinstance(backend, S3Storage) else None
    return sorted(p.name for p in spool.iterdir()) if spool and spool.exists() else []


# ------------------------------------------------------------------ the contract


def test_store_then_read_back(backend: AudioStorage) -> None:
    key, info = backend.store_bytes(WAV, "luid_a-1", max_bytes=MAX)

    assert key == "luid_a-1.wav"
    assert (info.format, info.sample_rate, info.channels, info.size) == ("wav", 22050, 2, len(WAV))
    assert backend.exists(key)
    assert backend.size(key) == len(WAV)
    assert b"".join(backend.stream(key)) == WAV
    assert backend.read_bytes(key, max_bytes=len(WAV)) == WAV
    assert stored(backend) == [key]
    assert spool_leftovers(backend) == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 0, WAV[:1]),
        (10, 19, WAV[10:20]),
        (100, None, WAV[100:]),
        (len(WAV) - 5, len(WAV) - 1, WAV[-5:]),
        (len(WAV) - 5, len(WAV) + 100, WAV[-5:]),  # an end past the file stops at the file
    ],
)
def test_stream_a_byte_range(
    backend: AudioStorage, start: int, end: int | None, expected: bytes
) -> None:
    key, _ = backend.store_bytes(WAV, "ranged", max_bytes=MAX)
    assert b"".join(backend.stream(key, start, end)) == expected


def test_a_large_file_streams_in_chunks(backend: AudioStorage) -> None:
    key, _ = backend.store_bytes(BIG_WAV, "big", max_bytes=MAX)
    chunks = list(backend.stream(key))
    assert len(chunks) > 1 and max(map(len, chunks)) <= 64 * 1024
    assert b"".join(chunks) == BIG_WAV


def test_read_bytes_refuses_more_than_asked(backend: AudioStorage) -> None:
    key, _ = backend.store_bytes(WAV, "capped", max_bytes=MAX)
    with pytest.raises(AudioTooLarge, match=str(len(WAV))):
        backend.read_bytes(key, max_bytes=len(WAV) - 1)


def test_a_missing_key(backend: AudioStorage) -> None:
    assert backend.exists("nope.wav") is False
    with pytest.raises(FileNotFoundError):
        backend.size("nope.wav")
    with pytest.raises(FileNotFoundError):
        backend.stream("nope.wav")
    with pytest.raises(FileNotFoundError):
        backend.read_bytes("nope.wav", max_bytes=MAX)


def test_delete_is_idempotent(backend: AudioStorage) -> None:
    key, _ = backend.store_bytes(WAV, "gone", max_bytes=MAX)
    backend.delete(key)
    assert not backend.exists(key)
    backend.delete(key)
    assert stored(backend) == []


def test_delete_many(backend: AudioStorage) -> None:
    keys = [backend.store_bytes(WAV, f"many-{i}", max_bytes=MAX)[0] for i in range(3)]
    kept, _ = backend.store_bytes(WAV, "kept", max_bytes=MAX)
    backend.delete_many([*keys, "never-stored.wav"])
    assert stored(backend) == [kept]
    backend.delete_many([])


def test_fetch_over_http(audio_server: Server, backend: AudioStorage) -> None:
    key, info = backend.fetch(
        f"{audio_server.url}/streamed.wav",
        "fetched",
        max_bytes=MAX,
        timeout=TIMEOUT,
        downloads=Downloads(load_settings({})),
        trusted=audio_server.url,
    )
    assert (key, info.size) == ("fetched.wav", len(BIG_WAV))
    assert b"".join(backend.stream(key)) == BIG_WAV
    assert spool_leftovers(backend) == []


@pytest.mark.parametrize(
    ("path", "max_bytes", "message"),
    [("/page.html", MAX, "not audio"), ("/streamed.wav", len(BIG_WAV) - 1, "larger than")],
)
def test_nothing_is_kept_unless_it_is_audio_within_the_cap(
    audio_server: Server, backend: AudioStorage, path: str, max_bytes: int, message: str
) -> None:
    with pytest.raises(AudioError, match=message) as info:
        backend.fetch(
            audio_server.url + path,
            "bad",
            max_bytes=max_bytes,
            timeout=TIMEOUT,
            downloads=Downloads(load_settings({})),
            trusted=audio_server.url,
        )
    assert info.value.retryable is False
    assert stored(backend) == []
    assert spool_leftovers(backend) == []


@pytest.mark.parametrize("stem", ["../x", "/etc/x", "a/../../x", ""])
def test_a_stem_that_escapes_is_refused(backend: AudioStorage, stem: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        backend.store_bytes(WAV, stem, max_bytes=MAX)
    assert stored(backend) == []


# ------------------------------------------------------------------ S3 specifics


def test_s3_objects_live_under_the_prefix_with_a_content_type(
    s3: S3StandIn, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    storage = S3Storage(s3_settings(s3, bucket, prefix="/chorus/audio/"), spool_dir=tmp_path)
    key, _ = storage.store_bytes(WAV, "luid_x-1", max_bytes=MAX)
    assert key == "luid_x-1.wav"
    assert s3.keys(bucket) == ["chorus/audio/luid_x-1.wav"]
    head = s3.client.head_object(Bucket=bucket, Key="chorus/audio/luid_x-1.wav")
    assert head["ContentType"] == "audio/wav"
    assert head["ContentLength"] == len(WAV)


def test_s3_client_has_the_configured_timeouts_and_retries(s3: S3StandIn) -> None:
    storage = S3Storage(s3_settings(s3, "any"))
    config = storage.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2.0, 5.0)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
    assert storage.client.meta.endpoint_url == s3.url


def dead_s3(s3: S3StandIn, spool: Path | None = None) -> S3Storage:
    """An S3Storage whose endpoint refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = s3_settings(s3, "down")
    return S3Storage(
        dataclasses.replace(settings, endpoint_url=f"http://127.0.0.1:{port}"), spool_dir=spool
    )


def test_s3_down_is_a_retryable_error_and_leaves_no_spool(s3: S3StandIn, tmp_path: Path) -> None:
    dead = dead_s3(s3, tmp_path / "spool")
    with pytest.raises(AudioError) as info:
        dead.store_bytes(WAV, "luid_y-1", max_bytes=MAX)
    assert info.value.retryable is True
    assert list((tmp_path / "spool").iterdir()) == []
    # Reads fail loudly too, and never as a missing file.
    with pytest.raises(StorageUnavailable):
        dead.size("x.wav")
    with pytest.raises(StorageUnavailable):
        dead.stream("x.wav")


def test_s3_missing_bucket_is_not_a_missing_file(s3: S3StandIn) -> None:
    storage = S3Storage(s3_settings(s3, "no-such-bucket-here"))
    # A misconfigured bucket must be loud, not look like one lost file. (A HEAD answer has no
    # body to tell the two apart, so only reads can.)
    with pytest.raises(StorageUnavailable, match="refused"):
        storage.stream("x.wav")


# ------------------------------------------------------------------ settings


def test_storage_url_chooses_the_backend(tmp_path: Path) -> None:
    default = load_settings({"CHORUS_VAR_DIR": str(tmp_path)})
    assert default.s3 is None and default.storage_dir == tmp_path / "audio"
    assert isinstance(make_storage(default), LocalStorage)

    folder = load_settings({"STORAGE_URL": f"file://{tmp_path}/songs"})
    assert folder.s3 is None and folder.storage_dir == tmp_path / "songs"

    s3 = load_settings(
        {
            "CHORUS_VAR_DIR": str(tmp_path),
            "STORAGE_URL": "s3://tracks/prod/audio/",
            "S3_ENDPOINT_URL": "http://minio:9000",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "sekrit-value",
            "STORAGE_READ_TIMEOUT": "12",
            "STORAGE_MAX_ATTEMPTS": "4",
        }
    )
    assert s3.s3 is not None
    assert (s3.s3.bucket, s3.s3.prefix, s3.s3.endpoint_url) == (
        "tracks",
        "prod/audio",
        "http://minio:9000",
    )
    assert (s3.s3.addressing_style, s3.s3.read_timeout, s3.s3.max_attempts) == ("path", 12.0, 4)
    assert (s3.s3.access_key_id, s3.s3.secret_access_key) == ("id", "sekrit-value")
    assert "sekrit-value" not in repr(s3)
    storage = make_storage(s3)
    assert isinstance(storage, S3Storage) and storage.prefix == "prod/audio/"

    aws = load_settings({"STORAGE_URL": "s3://tracks"})
    assert aws.s3 is not None and aws.s3.prefix == "" and aws.s3.addressing_style == "auto"
    assert aws.s3.access_key_id is None  # boto3's own chain: env, profile, instance role


@pytest.mark.parametrize("url", ["ftp://x/y", "s3://", "s3:///prefix", "file://", "audio"])
def test_a_bad_storage_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="STORAGE_URL"):
        load_settings({"STORAGE_URL": url})


def test_retention_settings() -> None:
    settings = load_settings({})
    assert (settings.retention_days, settings.retention_batch) == (30.0, 500)
    assert load_settings({"RETENTION_DAYS": "0"}).retention_days == 0


def test_the_scheduler_sends_the_purge_unless_retention_is_off(database_url: str) -> None:
    from config.celery import POLL_QUEUE, celery_config
    from workers import make_celery
    from workers.scheduler import Scheduler

    settings = load_settings({"DATABASE_URL": database_url, "RETENTION_INTERVAL": "600"})
    periodic = {p.task: p.interval for p in Scheduler(make_celery(settings)).periodic}
    assert periodic["chorus.purge_expired"] == 600
    assert celery_config(settings)["task_routes"]["chorus.purge_expired"] == {"queue": POLL_QUEUE}
    retention_off = {"DATABASE_URL": database_url, "RETENTION_DAYS": "0"}
    off = Scheduler(make_celery(load_settings(retention_off))).periodic
    assert "chorus.purge_expired" not in {p.task for p in off}

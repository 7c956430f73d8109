"""Chorus's own copy of each track: upstream links expire within a day, ours do not.

Two backends share one interface (``AudioStorage``): a local folder (``LocalStorage``) and any
S3-compatible object store (``S3Storage``). Both check a track the same way before keeping
it: the body is spooled to a local temporary file under the size cap, and mutagen must
recognise it as audio. Only then is it renamed into the folder or uploaded to the bucket,
so neither backend ever holds a partial or non-audio object under a job's key.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mutagen
import requests

from app.http.guard import RefusedURL
from config.settings import S3Settings

if TYPE_CHECKING:
    from app.http.downloads import Downloads
    from config import Settings

CHUNK = 64 * 1024


@dataclass(frozen=True)
class AudioInfo:
    format: str
    sample_rate: int | None
    bitrate: int | None
    channels: int | None
    duration_ms: int
    size: int


class AudioError(Exception):
    """The upstream's audio could not be fetched (``retryable``) or is not audio at all."""

    def __init__(self, message: str, *, retryable: bool, gone: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        # The upstream's link answered 4xx: the file is no longer there to take.
        self.gone = gone


class AudioTooLarge(Exception):
    """A stored object is larger than the caller agreed to hold in memory."""


class StorageUnavailable(OSError):
    """The audio store could not answer (down, refusing, misconfigured): not a missing file."""


FORMATS = {"WAVE": "wav", "MP3": "mp3", "FLAC": "flac", "OggVorbis": "ogg", "MP4": "m4a"}


class AudioStorage(Protocol):
    """Where finished tracks live. Keys are relative names such as ``luid_…-1a2b3c4d.wav``.

    Reads of a key that is not there raise ``FileNotFoundError`` on every backend.
    """

    def fetch(
        self,
        url: str,
        key_stem: str,
        *,
        max_bytes: int,
        timeout: tuple[float, float],
        downloads: Downloads,
        trusted: str | None = None,
    ) -> tuple[str, AudioInfo]: ...

    def store(
        self, chunks: Iterable[bytes], key_stem: str, *, max_bytes: int
    ) -> tuple[str, AudioInfo]: ...

    def store_bytes(
        self, data: bytes, key_stem: str, *, max_bytes: int
    ) -> tuple[str, AudioInfo]: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive (to the last byte when ``end`` is None)."""
        ...

    def read_bytes(self, key: str, *, max_bytes: int) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> None: ...


class _Storage:
    """What both backends share: download, validate, then ``_keep`` the checked file."""

    # Folder for the temporary copy being checked; None means the system's temp folder.
    spool_dir: Path | None = None

    def fetch(
        self,
        url: str,
        key_stem: str,
        *,
        max_bytes: int,
        timeout: tuple[float, float],
        downloads: Downloads,
        trusted: str | None = None,
    ) -> tuple[str, AudioInfo]:
        """Download ``url``, check it is audio, store it; returns (key, info).

        ``trusted``: the base URL of the upstream that handed the link out (see
        ``app.http.downloads``)."""
        try:
            with downloads.get(url, timeout=timeout, trusted=trusted) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise AudioError(
                        f"audio download answered HTTP {response.status_code}", retryable=True
                    )
                if response.status_code >= 400:
                    raise AudioError(
                        f"audio download answered HTTP {response.status_code}",
                        retryable=False,
                        gone=True,
                    )
                return self.store(response.iter_content(CHUNK), key_stem, max_bytes=max_bytes)
        except RefusedURL as exc:
            raise AudioError(str(exc), retryable=False) from exc
        except requests.RequestException as exc:
            raise AudioError(f"audio download failed: {exc}", retryable=True) from exc

    def store_bytes(self, data: bytes, key_stem: str, *, max_bytes: int) -> tuple[str, AudioInfo]:
        return self.store([data], key_stem, max_bytes=max_bytes)

    def store(
        self, chunks: Iterable[bytes], key_stem: str, *, max_bytes: int
    ) -> tuple[str, AudioInfo]:
        self._check_stem(key_stem)
        spool = self.spool_dir
        if spool is not None:
            spool.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=spool, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise AudioError(f"audio is larger than {max_bytes} bytes", retryable=False)
                    out.write(chunk)
            info = inspect(tmp, size)
            key = f"{key_stem}.{info.format}"
            self._keep(tmp, key, info)
            return key, info
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read_bytes(self, key: str, *, max_bytes: int) -> bytes:
        """The whole object, refused (``AudioTooLarge``) past ``max_bytes``, never silently."""
        size = self.size(key)
        if size > max_bytes:
            raise AudioTooLarge(f"{key} holds {size} bytes, more than {max_bytes}")
        return b"".join(self.stream(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    # Backends implement these.

    def _check_stem(self, key_stem: str) -> None:
        raise NotImplementedError

    def _keep(self, checked: Path, key: str, info: AudioInfo) -> None:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class LocalStorage(_Storage):
    """Audio files in a local folder, written atomically (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The temp file sits in the folder itself, so the final rename never crosses disks.
        self.spool_dir = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the storage folder: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        # Opened now, not at the first next(): a missing file fails here, before any header.
        handle = self.path(key).open("rb")
        return _read_file(handle, start, end)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def _check_stem(self, key_stem: str) -> None:
        self.path(key_stem)

    def _keep(self, checked: Path, key: str, info: AudioInfo) -> None:
        checked.replace(self.path(key))


def _read_file(handle: Any, start: int, end: int | None) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
}


class S3Storage(_Storage):
    """Audio objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, …), under a prefix."""

    def __init__(self, config: S3Settings, spool_dir: Path | None = None) -> None:
        self.config = config
        self.spool_dir = spool_dir
        self.prefix = config.prefix.strip("/") + "/" if config.prefix.strip("/") else ""
        self._client: Any = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """A boto3 client of this process: built on first use, again after a fork."""
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = self._make_client()
                    self._client_pid = os.getpid()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        cfg = self.config
        return boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key,
            aws_session_token=cfg.session_token,
            config=Config(
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
                s3={"addressing_style": cfg.addressing_style},
            ),
        )

    def object_key(self, key: str) -> str:
        return self.prefix + key

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise _missing(exc, key) from exc
        return int(head["ContentLength"])

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        options: dict[str, Any] = {}
        if start or end is not None:
            options["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            # The request is made now, so a missing object fails before any header is sent.
            answer = self.client.get_object(
                Bucket=self.config.bucket, Key=self.object_key(key), **options
            )
        except Exception as exc:
            raise _missing(exc, key) from exc
        return _read_body(answer["Body"])

    def delete(self, key: str) -> None:
        # S3 answers 204 for a key that is not there: deleting twice is fine.
        self.client.delete_object(Bucket=self.config.bucket, Key=self.object_key(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self.object_key(k)} for k in keys]
        # One request per 1,000 keys, S3's limit for a multi-object delete.
        for start in range(0, len(batch), 1000):
            answer = self.client.delete_objects(
                Bucket=self.config.bucket,
                Delete={"Objects": batch[start : start + 1000], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(
                    f"{len(errors)} audio object(s) could not be deleted; first: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def _check_stem(self, key_stem: str) -> None:
        if not key_stem or key_stem.startswith("/") or ".." in key_stem.split("/"):
            raise ValueError(f"storage key escapes the storage prefix: {key_stem!r}")

    def _keep(self, checked: Path, key: str, info: AudioInfo) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # upload_file switches to a multipart upload for large files by itself.
            self.client.upload_file(
                str(checked),
                self.config.bucket,
                self.object_key(key),
                ExtraArgs={
                    "ContentType": CONTENT_TYPES.get(info.format, "application/octet-stream")
                },
            )
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            # The store is down or refusing: the track is fine, so the job tries again later.
            raise AudioError(f"could not store the audio: {exc}", retryable=True) from exc


def _read_body(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def _missing(exc: Exception, key: str) -> Exception:
    """``FileNotFoundError`` for S3's "no such key"; ``StorageUnavailable`` for its faults."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            return FileNotFoundError(f"no stored audio under {key!r}")
        return StorageUnavailable(f"the audio store refused to read {key!r}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StorageUnavailable(f"the audio store could not be reached: {exc}")
    return exc


def make_storage(settings: Settings) -> AudioStorage:
    """The backend ``STORAGE_URL`` names."""
    if settings.s3 is not None:
        return S3Storage(settings.s3, spool_dir=settings.var_dir / "spool")
    return LocalStorage(settings.storage_dir)


def inspect(path: Path, size: int) -> AudioInfo:
    """Read the container header; anything mutagen cannot identify is not audio."""
    try:
        parsed = mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise AudioError(f"unreadable audio: {exc}", retryable=False) from exc
    if parsed is None or parsed.info is None:
        raise AudioError("the upstream's file is not audio", retryable=False)
    kind = type(parsed).__name__
    fmt = FORMATS.get(kind, kind.lower())
    info = parsed.info
    return AudioInfo(
        format=fmt,
        sample_rate=getattr(info, "sample_rate", None),
        bitrate=getattr(info, "bitrate", None),
        channels=getattr(info, "channels", None),
        duration_ms=round(float(getattr(info, "length", 0.0)) * 1000),
        size=size,
    )

"""Chorus's own copy of each track: upstream links expire within a day, ours do not."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mutagen
import requests


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


FORMATS = {"WAVE": "wav", "MP3": "mp3", "FLAC": "flac", "OggVorbis": "ogg", "MP4": "m4a"}


class LocalStorage:
    """Audio files in a local folder, written atomically (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the storage folder: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def fetch(
        self,
        url: str,
        key_stem: str,
        *,
        max_bytes: int,
        timeout: tuple[float, float],
        session: requests.Session | None = None,
    ) -> tuple[str, AudioInfo]:
        """Download ``url``, check it is audio, store it; returns (key, info)."""
        http = session or requests
        try:
            with http.get(url, stream=True, timeout=timeout) as response:
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
                return self.store(response.iter_content(64 * 1024), key_stem, max_bytes=max_bytes)
        except requests.RequestException as exc:
            raise AudioError(f"audio download failed: {exc}", retryable=True) from exc

    def store_bytes(self, data: bytes, key_stem: str, *, max_bytes: int) -> tuple[str, AudioInfo]:
        return self.store([data], key_stem, max_bytes=max_bytes)

    def store(self, chunks: Any, key_stem: str, *, max_bytes: int) -> tuple[str, AudioInfo]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
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
            tmp.replace(self.path(key))
            return key, info
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


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

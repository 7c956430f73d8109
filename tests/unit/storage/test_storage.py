"""LocalStorage: download over real HTTP, check it is audio, store it atomically."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from app.http.downloads import Downloads
from app.storage import AudioError, AudioInfo, LocalStorage, inspect
from config.settings import load_settings
from tests.audio import BIG_WAV, WAV, Server, make_wav

TIMEOUT = (2.0, 5.0)
MAX = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def downloads() -> Downloads:
    # The test server is on loopback; what the guard refuses is tests/unit/http/test_guard.py's.
    return Downloads(load_settings({"ALLOW_PRIVATE_URLS": "true"}))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "audio"


@pytest.fixture
def storage(root: Path) -> LocalStorage:
    return LocalStorage(root)


def leftovers(root: Path) -> list[str]:
    """Every entry in the storage folder, hidden temp files included."""
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def fetch_error(storage: LocalStorage, downloads: Downloads, url: str, **kwargs: Any) -> AudioError:
    options: dict[str, Any] = {
        "max_bytes": MAX,
        "timeout": TIMEOUT,
        "downloads": downloads,
        **kwargs,
    }
    with pytest.raises(AudioError) as info:
        storage.fetch(url, "job-1", **options)
    return info.value


# ------------------------------------------------------------------ success


def test_fetch_a_wav(
    audio_server: Server, storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    key, info = storage.fetch(
        f"{audio_server.url}/song.wav", "01JOB", max_bytes=MAX, timeout=TIMEOUT, downloads=downloads
    )

    assert key == "01JOB.wav"
    assert info.format == "wav"
    assert info.sample_rate == 22050
    assert info.channels == 2
    assert info.duration_ms == 1500
    assert info.size == len(WAV)
    assert info.bitrate == 22050 * 2 * 16
    assert leftovers(root) == ["01JOB.wav"]
    assert (root / key).read_bytes() == WAV
    assert storage.exists(key)
    assert storage.path(key) == (root / key).resolve()


def test_fetch_through_a_redirect(
    audio_server: Server, storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    key, info = storage.fetch(
        f"{audio_server.url}/redirect", "j2", max_bytes=MAX, timeout=TIMEOUT, downloads=downloads
    )
    assert key == "j2.wav" and info.size == len(WAV)
    assert leftovers(root) == ["j2.wav"]


def test_a_body_of_exactly_max_bytes_is_accepted(
    audio_server: Server, storage: LocalStorage, downloads: Downloads
) -> None:
    _, info = storage.fetch(
        f"{audio_server.url}/song.wav",
        "j4",
        max_bytes=len(WAV),
        timeout=TIMEOUT,
        downloads=downloads,
    )
    assert info.size == len(WAV)


def test_fetching_again_replaces_the_file(
    audio_server: Server, storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    storage.fetch(
        f"{audio_server.url}/song.wav", "same", max_bytes=MAX, timeout=TIMEOUT, downloads=downloads
    )
    storage.fetch(
        f"{audio_server.url}/big.wav", "same", max_bytes=MAX, timeout=TIMEOUT, downloads=downloads
    )
    assert leftovers(root) == ["same.wav"]
    assert (root / "same.wav").read_bytes() == BIG_WAV


def test_store_bytes_and_delete(storage: LocalStorage, root: Path) -> None:
    key, info = storage.store_bytes(WAV, "inline", max_bytes=MAX)
    assert (key, info.format, info.size) == ("inline.wav", "wav", len(WAV))
    storage.delete(key)
    assert leftovers(root) == []
    storage.delete(key)  # deleting twice is fine
    assert not storage.exists(key)


def test_inspect_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(make_wav(seconds=0.25, rate=16000, channels=1))
    assert inspect(path, 123) == AudioInfo(
        format="wav", sample_rate=16000, bitrate=256000, channels=1, duration_ms=250, size=123
    )


# ------------------------------------------------------------------ not audio, too big


def test_a_body_that_is_not_audio(
    audio_server: Server, storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    error = fetch_error(storage, downloads, f"{audio_server.url}/page.html")
    assert error.retryable is False
    assert "not audio" in str(error)
    assert leftovers(root) == []


@pytest.mark.parametrize("data", [b"", b"\0" * 4096, b"RIFF\x24\0\0\0WAVEjunk", b"ID3"])
def test_stored_bytes_that_are_not_audio(storage: LocalStorage, root: Path, data: bytes) -> None:
    with pytest.raises(AudioError) as info:
        storage.store_bytes(data, "bad", max_bytes=MAX)
    assert info.value.retryable is False
    assert leftovers(root) == []


@pytest.mark.parametrize("path", ["/big.wav", "/streamed.wav"])
def test_a_body_over_max_bytes(
    audio_server: Server, storage: LocalStorage, root: Path, path: str, downloads: Downloads
) -> None:
    error = fetch_error(storage, downloads, audio_server.url + path, max_bytes=len(BIG_WAV) - 1)
    assert error.retryable is False
    assert str(len(BIG_WAV) - 1) in str(error)
    assert leftovers(root) == []


def test_stored_bytes_over_max_bytes(storage: LocalStorage, root: Path) -> None:
    with pytest.raises(AudioError):
        storage.store_bytes(WAV, "big", max_bytes=len(WAV) - 1)
    assert leftovers(root) == []


# ------------------------------------------------------------------ HTTP and transport


@pytest.mark.parametrize("path", ["/503", "/502", "/429"])
def test_server_trouble_is_retryable(
    audio_server: Server, storage: LocalStorage, root: Path, path: str, downloads: Downloads
) -> None:
    error = fetch_error(storage, downloads, audio_server.url + path)
    assert error.retryable is True
    assert path.strip("/") in str(error)
    assert leftovers(root) == []


@pytest.mark.parametrize("path", ["/404", "/403"])
def test_client_errors_are_not_retryable(
    audio_server: Server, storage: LocalStorage, root: Path, path: str, downloads: Downloads
) -> None:
    error = fetch_error(storage, downloads, audio_server.url + path)
    assert error.retryable is False
    assert path.strip("/") in str(error)
    assert leftovers(root) == []


def test_connection_refused_is_retryable(
    storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(storage, downloads, f"http://127.0.0.1:{port}/song.wav")
    assert error.retryable is True
    assert isinstance(error.__cause__, requests.ConnectionError)
    assert leftovers(root) == []


def test_a_silent_server_times_out_retryably(
    storage: LocalStorage, root: Path, downloads: Downloads
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        port = sock.getsockname()[1]
        error = fetch_error(
            storage, downloads, f"http://127.0.0.1:{port}/x.wav", timeout=(1.0, 0.3)
        )
    assert error.retryable is True
    assert leftovers(root) == []


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("key", ["../x", "../../etc/passwd", "a/../../x", "/etc/passwd", "", "."])
def test_a_key_that_escapes_the_folder(storage: LocalStorage, key: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        storage.path(key)


def test_a_stem_that_escapes_the_folder_writes_nothing(
    storage: LocalStorage, root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        storage.store_bytes(WAV, "../x", max_bytes=MAX)
    assert leftovers(root) == []
    assert not (tmp_path / "x.wav").exists()
    with pytest.raises(ValueError):
        storage.exists("../x.wav")
    with pytest.raises(ValueError):
        storage.delete("../x.wav")


def test_a_neighbour_folder_with_the_same_prefix_is_outside(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "audio")
    with pytest.raises(ValueError):
        storage.path("../audio-other/x.wav")
    assert storage.path("sub/x.wav") == (tmp_path / "audio" / "sub" / "x.wav").resolve()

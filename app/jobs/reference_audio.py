"""Checking a client's reference track before anything is charged or sent upstream.

The URL comes from a stranger, so it is fetched through the SSRF guard (``app.http.guard``),
and a redirect is an answer, not followed. The body is capped, then its header is read with mutagen: the upstreams want WAV or
MP3 longer than 15 seconds, and a refusal now beats a FAILED job a minute later.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mutagen
import requests
import ssrfguard
import urllib3

from app.http import guard
from app.jobs.errors import BadReferenceAudio, ReferenceFetchBusy
from config import Settings

MIN_SECONDS = 15.0
MAX_SECONDS = 600.0
# The whole fetch, however the server paces it: a web thread waits on it, and a server that
# sends a byte now and then would pass any per-read timeout for ever.
FETCH_SECONDS = 20.0
ACCEPTED = {"WAVE": "wav", "MP3": "mp3"}

# The fetches under way in this process, per cap (REFERENCE_FETCH_CONCURRENCY).
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


@contextmanager
def fetch_slot(settings: Settings) -> Iterator[None]:
    """One of the process's REFERENCE_FETCH_CONCURRENCY fetches, or ``ReferenceFetchBusy`` at
    once: each fetch holds a web thread for up to FETCH_SECONDS, and without a cap slow
    references would hold them all."""
    cap = settings.reference_fetch_concurrency
    with _slots_lock:
        slots = _slots.setdefault(cap, threading.BoundedSemaphore(cap))
    if not slots.acquire(blocking=False):
        raise ReferenceFetchBusy()
    try:
        yield
    finally:
        slots.release()


def check(
    url: str,
    settings: Settings,
    session: requests.Session | None = None,
    *,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
) -> None:
    """Raise ``BadReferenceAudio`` unless ``url`` serves a WAV or MP3 longer than 15 seconds
    (``ReferenceFetchBusy`` if this process is fetching as many as it may).

    A model's catalog may set its own bounds (MiniMax's cover: 6 s to 6 min, 50 MB); the
    size is capped by REFERENCE_AUDIO_MAX_BYTES whatever the model says.
    """
    try:
        guard.check_written(url, settings)
    except guard.RefusedURL as exc:
        raise BadReferenceAudio(f"that address is not allowed: {exc}") from exc
    limit = settings.reference_audio_max_bytes
    if max_bytes is not None:
        limit = min(limit, max_bytes)
    low = MIN_SECONDS if min_seconds is None else min_seconds
    high = MAX_SECONDS if max_seconds is None else max_seconds
    with fetch_slot(settings):
        _check(url, settings, session, limit, (low, high))


def _check(
    url: str,
    settings: Settings,
    session: requests.Session | None,
    limit: int,
    seconds: tuple[float, float],
) -> None:
    http = session or guard.session(settings)
    with tempfile.NamedTemporaryFile(prefix="chorus-ref-") as tmp:
        try:
            deadline = time.monotonic() + FETCH_SECONDS
            with http.get(url, stream=True, timeout=(5, 10), allow_redirects=False) as response:
                if response.status_code != 200:
                    raise BadReferenceAudio(f"fetching it answered HTTP {response.status_code}")
                size = 0
                # read1: whatever has arrived, so the deadline is looked at as bytes trickle in.
                while chunk := response.raw.read1(64 * 1024, decode_content=True):
                    if time.monotonic() > deadline:
                        raise BadReferenceAudio(
                            f"it took longer than {FETCH_SECONDS:g} seconds to fetch"
                        )
                    size += len(chunk)
                    if size > limit:
                        raise BadReferenceAudio(f"it is larger than {limit // 1_000_000} MB")
                    tmp.write(chunk)
        except ssrfguard.SSRFGuardError as exc:
            raise BadReferenceAudio(f"that address is not allowed ({type(exc).__name__})") from exc
        # read1 is urllib3's own: a server that hangs up mid-body raises urllib3's errors,
        # which requests wraps only around its own reads.
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise BadReferenceAudio(f"it could not be fetched ({type(exc).__name__})") from exc
        tmp.flush()
        _inspect(Path(tmp.name), *seconds)


def _inspect(path: Path, low: float = MIN_SECONDS, high: float = MAX_SECONDS) -> None:
    try:
        parsed = mutagen.File(path)
    except mutagen.MutagenError:
        parsed = None
    if parsed is None or type(parsed).__name__ not in ACCEPTED:
        raise BadReferenceAudio("it must be a WAV or MP3 file")
    length = float(getattr(parsed.info, "length", 0.0))
    if length <= low:
        raise BadReferenceAudio(f"it must be longer than {low:g} seconds (it is {length:.1f})")
    if length > high:
        raise BadReferenceAudio(f"it must be at most {high:g} seconds (it is {length:.1f})")

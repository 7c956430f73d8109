"""Real, playable WAV files for simulated generations (mono, 16-bit PCM, a steady tone)."""

from __future__ import annotations

import io
import math
import sys
import wave
from array import array
from functools import lru_cache

SAMPLE_RATES = frozenset({16000, 24000, 32000, 44100})
DEFAULT_SAMPLE_RATE = 32000

# "Follows the request": a song with more lyric lines is longer, within sane bounds.
SECONDS_PER_LYRIC_LINE = 2.5
MIN_SECONDS = 5.0
MAX_SECONDS = 60.0
PROMPT_ONLY_SECONDS = 10.0

TONE_HZ = 440.0
AMPLITUDE = 0.3


def derive_duration(lyrics: str | None, override: float | None) -> float:
    """Seconds of audio a generation should produce: the configured override, else by lyrics."""
    if override is not None:
        return float(override)
    lines = [line for line in (lyrics or "").splitlines() if line.strip()]
    if not lines:
        return PROMPT_ONLY_SECONDS
    return min(MAX_SECONDS, max(MIN_SECONDS, SECONDS_PER_LYRIC_LINE * len(lines)))


def frame_count(seconds: float, sample_rate: int) -> int:
    return max(0, round(seconds * sample_rate))


@lru_cache(maxsize=4)
def _period(sample_rate: int) -> bytes:
    """One whole period of the tone as little-endian 16-bit samples.

    The period is rounded to whole samples so that repeating it joins without clicks; the tone
    ends up a few Hz off ``TONE_HZ``, which nobody listening to a simulator will mind.
    """
    n = max(2, round(sample_rate / TONE_HZ))
    peak = int(32767 * AMPLITUDE)
    samples = array("h", (round(peak * math.sin(2 * math.pi * i / n)) for i in range(n)))
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian whatever the host is.
    return samples.tobytes()


# Most generations share a handful of (duration, rate) pairs, so a small cache serves nearly
# every download without rebuilding; 8 entries bound the memory to ~40 MB at the 60 s maximum.
@lru_cache(maxsize=8)
def wav_bytes(frames: int, sample_rate: int) -> bytes:
    """A complete WAV file of ``frames`` mono 16-bit samples at ``sample_rate``."""
    period = _period(sample_rate)
    size = frames * 2
    # Bytes repetition of one precomputed period: fast even for a minute of 44.1 kHz audio.
    pcm = (period * (size // len(period) + 1))[:size]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()


@lru_cache(maxsize=4)
def wav_hex(frames: int, sample_rate: int) -> str:
    """``wav_bytes`` as lowercase hex, MiniMax's default ``output_format``."""
    return wav_bytes(frames, sample_rate).hex()

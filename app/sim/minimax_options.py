"""What MiniMax checks of a music body beyond its types: the model, and the options each model
takes (https://platform.minimax.io/docs/api-reference/music-generation, the 2.5+/2.6 and cover
versions; ../shared/research/providers.md §1.2–1.3).

The simulator refuses what MiniMax refuses (``base_resp`` 2013, invalid params), so a
request Chorus gets wrong fails in tests as it would upstream. Vocal songs without lyrics are
left to pass: the simulator sings whatever it is given.
"""

from __future__ import annotations

from typing import Any

from app.sim.aimlapi import is_int

MUSIC_MODELS = frozenset(
    {
        "music-01",
        "music-1.5",
        "music-2.0",
        "music-2.5",
        "music-2.5-free",
        "music-2.5+",
        "music-2.6",
        "music-2.6-free",
        "music-3.0",
        "music-3.0-free",
    }
)
COVER_MODELS = frozenset({"music-cover", "music-cover-free"})
# is_instrumental came with 2.5+; 2.5 itself has only the lyrics optimizer.
NO_INSTRUMENTAL = frozenset({"music-01", "music-1.5", "music-2.0", "music-2.5", "music-2.5-free"})
MAX_SEED = 2**31 - 1
COVER_PROMPT = (10, 300)
COVER_LYRICS = (10, 1000)


def check_options(
    data: dict[str, Any], model: str, prompt: str, problems: list[str]
) -> dict[str, Any]:
    """Append MiniMax's complaints about the model and its options to ``problems``; return the
    options as read (for the record)."""
    options: dict[str, Any] = {}
    if model and model not in MUSIC_MODELS | COVER_MODELS:
        problems.append(f"model {model!r} is not supported")
        return options
    for flag in ("is_instrumental", "lyrics_optimizer", "aigc_watermark"):
        if flag in data:
            if not isinstance(data[flag], bool):
                problems.append(f"{flag} must be a boolean")
            else:
                options[flag] = data[flag]
    seed = data.get("seed")
    if seed is not None:
        if not is_int(seed) or not 0 <= seed <= MAX_SEED:
            problems.append(f"seed must be an integer from 0 to {MAX_SEED}")
        else:
            options["seed"] = seed
    setting = data.get("audio_setting")
    if isinstance(setting, dict) and "channel" in setting:
        if setting["channel"] not in (1, 2) or not is_int(setting["channel"]):
            problems.append("audio_setting.channel must be 1 or 2")
        else:
            options["channel"] = setting["channel"]
    sources = [k for k in ("audio_url", "audio_base64", "cover_feature_id") if data.get(k)]
    for key in sources:
        if not isinstance(data[key], str):
            problems.append(f"{key} must be a string")
    options.update({key: True for key in sources})
    if model in COVER_MODELS:
        _check_cover(data, prompt, sources, problems)
    else:
        if sources:
            problems.append(f"{', '.join(sources)} is only for the cover models")
        if options.get("is_instrumental") and model in NO_INSTRUMENTAL:
            problems.append(f"is_instrumental is not supported by {model}")
    return options


def _check_cover(
    data: dict[str, Any], prompt: str, sources: list[str], problems: list[str]
) -> None:
    if len(sources) != 1:
        problems.append("a cover needs exactly one of audio_url, audio_base64, cover_feature_id")
    for flag in ("is_instrumental", "lyrics_optimizer"):
        if flag in data:
            problems.append(f"{flag} is not supported by the cover models")
    low, high = COVER_PROMPT
    if prompt and not low <= len(prompt) <= high:
        problems.append(f"prompt must be {low} to {high} characters for a cover")
    lyrics = data.get("lyrics")
    if isinstance(lyrics, str) and lyrics:
        low, high = COVER_LYRICS
        if not low <= len(lyrics) <= high:
            problems.append(f"lyrics must be {low} to {high} characters for a cover")
    elif "cover_feature_id" in sources:
        problems.append("lyrics are required with cover_feature_id")

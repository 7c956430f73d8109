"""Reading MiniMax's streamed answer (``stream: true``, hex output): Server-Sent Events.

Each ``data:`` line is a JSON chunk. ``data.status`` 1 carries a hex piece of the audio in
``data.audio``; ``data.status`` 2 ends the song. Whether that last chunk carries only the last
piece or the whole audio again is not documented (../shared/research/providers.md §1.4), so
both readings are accepted: a final audio that starts with every piece received so far is the
whole song, anything else is one more piece. ``extra_info`` and ``trace_id`` are read from
whichever chunk has them. An error arrives as a chunk with a non-zero ``base_resp``.

A stream that ends without its status-2 chunk is an error, never a shorter song.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from app.providers.base import OnAudio, PollResult, PollState, ProviderError, Submission

# The final chunk's status.
DONE = 2
INCOMPLETE = "upstream_stream_incomplete"

# Raises the mapped ProviderError for a chunk whose base_resp is not success.
CheckChunk = Callable[[dict[str, Any]], None]


def events(lines: Iterator[bytes]) -> Iterator[str]:
    """The data of each Server-Sent Event (its ``data:`` lines joined), in order."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":…"), event names and ids carry nothing MiniMax uses.
    if data:
        yield "\n".join(data)


class StreamReader:
    """One streamed answer, read as it arrives until its final chunk or ``deadline``
    (a ``time.monotonic()`` value)."""

    def __init__(
        self,
        on_audio: OnAudio,
        check: CheckChunk,
        audio_info: Callable[[Any], dict[str, Any]],
        deadline: float,
    ) -> None:
        self.on_audio = on_audio
        self.check = check
        self.audio_info = audio_info
        self.deadline = deadline
        self.pieces: list[bytes] = []
        self.received = 0
        self.trace_id: str | None = None
        self.info: dict[str, Any] = {}

    def read(self, response: requests.Response) -> Submission:
        try:
            for event in events(response.iter_lines(chunk_size=65536)):
                done = self.chunk(event)
                if done is not None:
                    return done
                if time.monotonic() > self.deadline:
                    raise self.error(
                        "upstream_timeout", "the stream outlasted the call's deadline", True
                    )
        except requests.RequestException as exc:
            # The connection broke, or a read waited longer than the read timeout.
            code = "upstream_timeout" if isinstance(exc, requests.Timeout) else INCOMPLETE
            raise self.error(code, f"the stream broke off: {exc}", True) from exc
        raise self.error(INCOMPLETE, "the stream ended without its final chunk", True)

    def chunk(self, text: str) -> Submission | None:
        """Take one event; the result once the song is complete, else None."""
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self.error(
                "upstream_invalid_response", f"a chunk is not a JSON object: {text[:80]!r}", False
            )
        if isinstance(body.get("trace_id"), str) and body["trace_id"]:
            self.trace_id = body["trace_id"]
        self.check(body)
        self.info.update(self.audio_info(body.get("extra_info")))
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        audio = self.decode(data.get("audio"))
        if str(data.get("status")) != str(DONE):
            if audio:
                self.add(audio)
            return None
        whole = b"".join(self.pieces)
        if audio and whole and audio.startswith(whole):
            # The whole song again: hand on only what was not heard yet.
            if len(audio) > len(whole):
                self.add(audio[len(whole) :])
            whole = audio
        elif audio:
            self.add(audio)
            whole += audio
        raw_status = str(data.get("status"))
        if not whole:
            return Submission(
                self.trace_id,
                PollResult.unusable(
                    raw_status, f"MiniMax's stream ended without audio ({self.trace_id})"
                ),
            )
        return Submission(
            self.trace_id,
            PollResult(PollState.SUCCEEDED, raw_status, audio_bytes=whole, audio_info=self.info),
        )

    def decode(self, audio: Any) -> bytes:
        if audio is None or audio == "":
            return b""
        if not isinstance(audio, str):
            raise self.error("upstream_invalid_response", "a chunk's audio is not a string", False)
        try:
            return bytes.fromhex(audio)
        except ValueError:
            raise self.error(
                "upstream_invalid_response", f"a chunk's audio is not hex: {audio[:40]!r}", False
            ) from None

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.received += len(piece)
        self.on_audio(piece)

    def error(self, code: str, message: str, retryable: bool) -> ProviderError:
        """A stream that failed after it was accepted: MiniMax has the job, and once audio
        came it was making (and may bill) the song."""
        return ProviderError(
            code,
            f"{message} (trace_id {self.trace_id}, {self.received} bytes of audio received)",
            retryable=retryable,
            maybe_created=not self.pieces,
            maybe_billed=True,
        )

"""An incremental Server-Sent Events parser (the WHATWG HTML "event stream" rules).

Bytes are fed as they arrive, cut anywhere: inside a UTF-8 character, between the CR and LF
of a line end, in the middle of a field. Lines end with CRLF, LF or CR. A blank line
dispatches the event; ``:`` lines are comments (keep-alives); ``data:`` lines join with LF;
``id:`` sets the last event id (kept across events, as the spec says, so a resume after an
event that carried none still names the last one that did); ``retry:`` sets the reconnection
delay. An event cut off by the end of the stream is discarded, never half-delivered.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event: its ``type`` (``message`` when the stream named none), the ``id:`` it
    carried (None when it carried none), and its ``data``, parsed as JSON when it is JSON."""

    type: str
    id: str | None
    data: Any


class SSEParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # the line being received, in pieces
        self._started = False  # a BOM is skipped only at the very start of the stream
        self._after_cr = False  # the last chunk ended in CR: an LF opening the next is its pair
        self._data: list[str] = []
        self._type = ""
        self._id: str | None = None  # the id: of the event being read
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes, in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if text:
            if self._after_cr and text.startswith("\n"):
                text = text[1:]  # the LF of a CRLF whose CR ended the last chunk
            self._after_cr = text.endswith("\r")
            # Every line end as LF: a CR alone already ends its line, whatever comes next.
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            # Part of a line: kept in pieces, so a long line sent in small chunks costs its
            # length once, not once per chunk.
            if text:
                self._partial.append(text)
            return []
        buffer = "".join(self._partial) + text
        events: list[Event] = []
        start = 0  # cut once at the end: slicing after every line would copy the rest each time
        while (end := buffer.find("\n", start)) != -1:
            event = self._line(buffer[start:end])
            start = end + 1
            if event is not None:
                events.append(event)
        self._partial = [buffer[start:]] if start < len(buffer) else []
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._type = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
                self.last_event_id = value or None
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind, event_id = self._data, self._type, self._id
        self._data, self._type, self._id = [], "", None
        if not data:
            return None
        text = "\n".join(data)
        return Event(kind or "message", event_id or None, _parse(text))


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text

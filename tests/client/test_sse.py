"""The Server-Sent Events parser, fed crafted byte streams cut at every possible place."""

from __future__ import annotations

import random

import pytest

from chorus_client import Event, SSEParser

STREAM = (
    b"\xef\xbb\xbf: keep-alive\r\n"
    b"retry: 2500\r\n"
    b"event: music.generation.queued\r\n"
    b"id: 1\r\n"
    b'data: {"id": "luid_1",\r\n'
    b'data:  "status": "QUEUED"}\r\n'
    b"\r\n"
    b": keep-alive\n\n"
    # CR alone ends lines too; the data holds two- and four-byte UTF-8 characters.
    b'event: progress\rdata: {"progress": 0.5, "prompt": "caf\xc3\xa9 \xf0\x9f\x8e\xb5"}\r\r'
    # A field with no colon is the field with an empty value: a blank line of data.
    b"data: first\ndata\ndata:third\n\n"
    # No data: not dispatched, but its id is still the last one seen.
    b"event: no-data\nid: 7\n\n"
    b"retry: soon\n"  # not digits: ignored
    b"id: bad\x00id\n"  # a NUL: the field is ignored
    b"data: tail\n\n"
    b"event: cut\ndata: never"  # the stream ends inside an event: discarded
)

EXPECTED = [
    Event("music.generation.queued", "1", {"id": "luid_1", "status": "QUEUED"}),
    Event("progress", None, {"progress": 0.5, "prompt": "café 🎵"}),
    Event("message", None, "first\n\nthird"),
    Event("message", None, "tail"),
]


def parse(chunks: list[bytes]) -> tuple[list[Event], SSEParser]:
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser


def test_the_whole_stream_at_once() -> None:
    events, parser = parse([STREAM])
    assert events == EXPECTED
    assert parser.last_event_id == "7"
    assert parser.retry_ms == 2500


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_one_cut_anywhere_changes_nothing(cut: int) -> None:
    # Inside a CRLF, a UTF-8 character, the BOM, a field name: every place.
    events, parser = parse([STREAM[:cut], STREAM[cut:]])
    assert events == EXPECTED
    assert (parser.last_event_id, parser.retry_ms) == ("7", 2500)


def test_byte_by_byte() -> None:
    events, parser = parse([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED
    assert (parser.last_event_id, parser.retry_ms) == ("7", 2500)


def test_random_cuts_with_empty_chunks() -> None:
    rng = random.Random(16)
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(STREAM) + 1), rng.randint(1, 30)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert parse(chunks)[0] == EXPECTED


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: a\ndata: 1\n") == []
    assert parser.feed(b"\n") == [Event("a", None, 1)]
    assert parser.feed(b"data: 2\r") == []
    # The CR of a CRLF already ended the line; the LF in the next chunk is not a blank line.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [Event("message", None, 2)]


def test_crlf_then_lf_is_two_line_ends_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n") == []  # the LF of the CRLF
    assert parser.feed(b"\n") == [Event("message", None, "x")]  # a line end of its own


def test_a_bom_later_in_the_stream_is_data() -> None:
    events, _ = parse([b"data: a\n\n", "data: \ufeffb\n\n".encode()])
    assert events == [Event("message", None, "a"), Event("message", None, "\ufeffb")]


def test_an_empty_id_clears_the_last_event_id() -> None:
    events, parser = parse([b"id: 3\ndata: x\n\nid\ndata: y\n\n"])
    assert events == [Event("message", "3", "x"), Event("message", None, "y")]
    assert parser.last_event_id is None


def test_a_long_data_line_in_small_chunks() -> None:
    line = "🎵" * 200_000  # four bytes each: chunks of 500 bytes cut most of them
    raw = f"event: big\ndata: {line}\n\n".encode()
    events, _ = parse([raw[i : i + 500] for i in range(0, len(raw), 500)])
    assert events == [Event("big", None, line)]

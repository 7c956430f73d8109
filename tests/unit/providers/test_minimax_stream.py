"""The MiniMax adapter reading a streamed answer: against the real simulator over a socket,
and against a local server speaking the other reading of MiniMax's final chunk."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.providers.base import AccountConfig, GenerationRequest, PollState, ProviderError
from app.providers.minimax import MinimaxAdapter
from app.sim.audio import frame_count, wav_bytes
from tests.unit.sim.support import serving

LYRICS = "[Verse]\nOne\nTwo\nThree\nFour"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serving(SIM_LATENCY="1.2", SIM_JITTER="0", SIM_AUDIO_SECONDS="3") as url:
        yield url


def adapter_for(base_url: str, read_timeout: float = 10.0) -> MinimaxAdapter:
    return MinimaxAdapter(
        AccountConfig("mm", "minimax", base_url, "key", read_timeout=read_timeout)
    )


def streamed(prompt: str = "A calm song", **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "upstream_model": "music-2.0",
        "prompt": prompt,
        "lyrics": LYRICS,
        "output_format": "url",
        "stream": True,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


class Pieces:
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.times: list[float] = []

    def __call__(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.times.append(time.monotonic())


def test_pieces_arrive_in_order_before_the_end_and_join_into_the_song(sim_url: str) -> None:
    got = Pieces()
    started = time.monotonic()
    submission = adapter_for(sim_url).submit_streamed(streamed(), got)
    ended = time.monotonic()

    result = submission.result
    assert result is not None and result.state is PollState.SUCCEEDED
    assert result.audio_bytes is not None
    expected = wav_bytes(frame_count(3.0, 32000), 32000)
    assert result.audio_bytes == expected
    assert b"".join(got.pieces) == expected
    assert len(got.pieces) >= 2
    # The first piece came at about a quarter of the 1.2 s, well before the answer ended.
    assert got.times[0] - started < 0.8
    assert ended - got.times[0] > 0.5
    assert result.audio_info["duration_ms"] == 3000
    assert submission.generation_id


def test_without_stream_the_answer_is_whole_and_no_piece_is_handed_on(sim_url: str) -> None:
    got = Pieces()
    submission = adapter_for(sim_url).submit_streamed(streamed(stream=False), got)
    assert submission.result is not None and submission.result.audio_url
    assert got.pieces == []


def test_an_error_before_any_audio_is_the_usual_base_resp_error(sim_url: str) -> None:
    got = Pieces()
    with pytest.raises(ProviderError) as caught:
        adapter_for(sim_url).submit_streamed(streamed("x [sim:base-resp=1002]"), got)
    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.retryable
    assert got.pieces == []


def test_an_error_mid_stream_is_an_error_after_the_pieces(sim_url: str) -> None:
    got = Pieces()
    with pytest.raises(ProviderError) as caught:
        adapter_for(sim_url).submit_streamed(streamed("x [sim:stream-error]"), got)
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.maybe_billed
    assert got.pieces  # the song had begun


def test_a_stream_that_stops_without_its_final_chunk_is_an_error(sim_url: str) -> None:
    got = Pieces()
    with pytest.raises(ProviderError) as caught:
        adapter_for(sim_url).submit_streamed(streamed("x [sim:stream-cut]"), got)
    assert caught.value.code == "upstream_stream_incomplete"
    assert got.pieces
    assert "bytes of audio received" in caught.value.message


def sse(*chunks: dict[str, object]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)


def test_a_final_chunk_with_only_the_last_piece_completes_the_song(
    httpserver: HTTPServer,
) -> None:
    song = wav_bytes(frame_count(1.0, 16000), 16000)
    a, b, c = song[:1000], song[1000:5000], song[5000:]
    ok = {"status_code": 0, "status_msg": "success"}
    body = sse(
        {"data": {"audio": a.hex(), "status": 1}, "trace_id": "t1", "base_resp": ok},
        {"data": {"audio": b.hex(), "status": 1}, "base_resp": ok},
        {"data": {"audio": c.hex(), "status": 2}, "extra_info": {"music_size": len(song)}},
    )
    httpserver.expect_request("/v1/music_generation", method="POST").respond_with_response(
        Response(body, content_type="text/event-stream")
    )
    got = Pieces()
    submission = adapter_for(httpserver.url_for("/")).submit_streamed(streamed(), got)
    assert got.pieces == [a, b, c]
    assert submission.result is not None and submission.result.audio_bytes == song
    assert submission.result.audio_info == {"size": len(song)}
    assert submission.generation_id == "t1"


def test_the_request_asks_for_a_hex_stream(httpserver: HTTPServer) -> None:
    seen: list[dict[str, object]] = []

    def handler(request: Request) -> Response:
        seen.append(json.loads(request.data))
        return Response(
            sse({"data": {"audio": "00ff", "status": 2}}), content_type="text/event-stream"
        )

    httpserver.expect_request("/v1/music_generation").respond_with_handler(handler)
    submission = adapter_for(httpserver.url_for("/")).submit_streamed(streamed(), Pieces())
    assert seen[0]["stream"] is True and seen[0]["output_format"] == "hex"
    assert submission.result is not None and submission.result.audio_bytes == b"\x00\xff"


def test_an_unreadable_chunk_before_audio_may_have_made_the_song(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/music_generation").respond_with_response(
        Response("data: <html>\n\n", content_type="text/event-stream")
    )
    with pytest.raises(ProviderError) as caught:
        adapter_for(httpserver.url_for("/")).submit_streamed(streamed(), Pieces())
    assert caught.value.code == "upstream_invalid_response"
    assert caught.value.maybe_created and not caught.value.retryable

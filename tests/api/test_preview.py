"""``GET /v1/files/preview/{token}`` as Flask answers it (``app.api.jobs.preview``): the head
of the song with the header the event loop follows from. Served without the loop, as here,
the answer is that head alone; the whole song is the durable copy once the job succeeded."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import Database
from app.listeners import parse_preview
from config import Settings
from tests.conftest import auth
from tests.unit.jobs.support import end_streaming_job, store_pieces, streaming_job

pytestmark = pytest.mark.usefixtures("catalog")


def preview_link(client: Any, key: str, job_id: str) -> str:
    link: str = client.get(f"/v1/music/generations/{job_id}", headers=auth(key)).json[
        "audio_preview"
    ]
    assert link
    return link.removeprefix("http://localhost")


def test_the_head_is_the_song_so_far_and_says_where_it_ends(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    job_id = streaming_job(db, settings)
    link = preview_link(client, api_key, job_id)
    store_pieces(db, job_id, [b"RIFF", b"-two", b"-three"])
    answer = client.get(link)
    assert answer.status_code == 200
    assert answer.content_type == "audio/wav"
    assert answer.data == b"RIFF-two-three"
    listener = parse_preview(answer.headers["X-Chorus-Preview"].encode())
    assert listener is not None
    assert (listener.job_id, listener.after, listener.sent) == (job_id, 2, 14)
    assert answer.headers["Cache-Control"] == "no-cache"

    # Nothing stored yet: an empty head, followed from the first piece.
    quiet = streaming_job(db, settings)
    answer = client.get(preview_link(client, api_key, quiet))
    assert answer.status_code == 200 and answer.data == b""
    listener = parse_preview(answer.headers["X-Chorus-Preview"].encode())
    assert listener is not None and (listener.after, listener.sent) == (-1, 0)


def test_an_ended_job_redirects_to_its_copy_or_has_no_preview(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    made, failed = streaming_job(db, settings), streaming_job(db, settings)
    made_link, failed_link = (preview_link(client, api_key, j) for j in (made, failed))
    end_streaming_job(db, made, "SUCCEEDED", "song.wav")
    end_streaming_job(db, failed, "FAILED")
    moved = client.get(made_link)
    assert moved.status_code == 307 and "/v1/files/audio/" in moved.headers["Location"]
    gone = client.get(failed_link)
    assert gone.status_code == 404 and gone.json["error"]["code"] == "preview_not_available"
    unknown = client.get(made_link[:-4] + "AAAA")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"


@pytest.mark.env(PREVIEW_MAX_LISTENERS="0")
def test_with_no_listeners_allowed_the_link_is_busy(
    client: Any, api_key: str, db: Database, settings: Settings
) -> None:
    job_id = streaming_job(db, settings)
    busy = client.get(preview_link(client, api_key, job_id))
    assert busy.status_code == 503
    assert busy.json["error"]["code"] == "preview_busy"
    assert busy.headers["Retry-After"] == "5"

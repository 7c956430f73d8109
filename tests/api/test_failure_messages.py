"""A failed job tells its tenant what went wrong, never where: no upstream host or port in
the message, whichever surface reads it; the details go to the log."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.errors import MESSAGES
from app.wiring import writer
from config import load_settings
from tests.conftest import GOOD_BODY, auth

URL = "/v1/music/generations"


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.usefixtures("catalog")
def test_an_unreachable_upstream_is_reported_without_its_address(
    env: dict[str, str],
    db: Database,
    client: Any,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    # Every account of the default catalog calls SIM_URL: here, a port that refuses.
    settings = load_settings(
        {**env, "SIM_URL": f"http://127.0.0.1:{port}", "SUBMIT_MAX_ATTEMPTS": "1"}
    )
    engine = Engine(settings, db, transitions=writer(db, settings))
    created = client.post(URL, json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202, created.get_json()
    job_id = created.get_json()["id"]

    with caplog.at_level(logging.WARNING, logger="app.jobs"):
        claims = engine.claim_due(lookahead=0.0, limit=10)
        assert [c.job_id for c in claims] == [job_id]
        assert engine.advance(job_id, claims[0].token) == "failed"

    job = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert job["status"] == "FAILED"
    assert job["error"] == {
        "code": "upstream_unavailable",
        "message": MESSAGES["upstream_unavailable"],
    }
    v2 = client.get(f"/v2/generate/audio?generation_id={job_id}", headers=auth(api_key))
    listed = client.get(URL, headers=auth(api_key))
    for text in (str(job), v2.get_data(as_text=True), listed.get_data(as_text=True)):
        assert "127.0.0.1" not in text and str(port) not in text
    # The operator still has the details.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert job_id in logged and str(port) in logged

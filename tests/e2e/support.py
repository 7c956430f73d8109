"""What the end-to-end tests share: submitting a job through the API, reading it, and waiting
until a set of jobs has ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.db import Database
from app.jobs.engine import Engine
from app.jobs.leasing import DueClaim
from app.wiring import writer
from config import Settings
from tests.conftest import GOOD_BODY, auth, wait_for

URL = "/v1/music/generations"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def submit(client: Any, key: str, prompt: str = GOOD_BODY["prompt"], **extra: Any) -> str:
    response = client.post(URL, json={**GOOD_BODY, "prompt": prompt, **extra}, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def read(client: Any, key: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{URL}/{job_id}", headers=auth(key))
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def wait_terminal(
    client: Any,
    key: str,
    ids: list[str],
    timeout: float,
    read: Callable[[Any, str, str], dict[str, Any]] = read,
) -> dict[str, dict[str, Any]]:
    """Each job of ``ids`` once all have ended, read by ``read`` (which may check each look);
    on a timeout the error names the jobs still active."""
    last: dict[str, dict[str, Any]] = {}

    def done() -> dict[str, dict[str, Any]] | None:
        last.update({i: read(client, key, i) for i in ids})
        return last if all(j["status"] in TERMINAL for j in last.values()) else None

    try:
        result: dict[str, dict[str, Any]] = wait_for(
            done, timeout, interval=0.25, message="jobs to end"
        )
    except AssertionError as exc:
        stuck = {
            i: (j["status"], j.get("error")) for i, j in last.items() if j["status"] not in TERMINAL
        }
        raise AssertionError(f"{exc}; still active: {stuck}") from None
    return result


def claim_by_hand(settings: Settings, db: Database, ids: list[str]) -> list[DueClaim]:
    """Lease the jobs ``ids`` (all that are due) as the scheduler would, without one running."""
    claims = Engine(settings, db, transitions=writer(db, settings)).claim_due(
        lookahead=1.0, limit=100
    )
    assert sorted(c.job_id for c in claims) == ids
    return claims

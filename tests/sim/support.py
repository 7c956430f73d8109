"""Helpers shared by the simulator's tests."""

from __future__ import annotations

import io
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import Flask
from flask.testing import FlaskClient

from app.sim import create_sim_app
from app.sim.data import SimConfig
from app.sim.server import start_background
from app.sim.state import SimState
from config.settings import Settings, load_settings

T = TypeVar("T")


def make_settings(**env: str) -> Settings:
    # Only the simulator's settings matter; nothing here touches the disk.
    base = {"SIM_LATENCY": "0.2", "SIM_JITTER": "0"}
    base.update(env)
    return load_settings(base)


class FakeClock:
    """Stands in for time.time so status progression is tested without racing the scheduler."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def serving(**env: str) -> Iterator[str]:
    """A simulator on a real socket for as long as the block lasts; its base URL."""
    base_url, shutdown = start_background(make_settings(**env))
    try:
        yield base_url
    finally:
        shutdown()


def clocked_app(clock: FakeClock, **env: str) -> Flask:
    """A simulator that reads ``clock`` instead of the wall clock."""
    settings = make_settings(**env)
    defaults = SimConfig(settings.sim_latency, settings.sim_jitter, settings.sim_audio_seconds)
    return create_sim_app(settings, state=SimState(defaults, clock=clock))


def clocked_client(clock: FakeClock, **env: str) -> FlaskClient:
    """A client whose simulator reads ``clock`` instead of the wall clock."""
    return clocked_app(clock, **env).test_client()


def answered_late(
    client: FlaskClient, send: Callable[[FlaskClient], Any], look: Callable[[], T]
) -> tuple[Any, float, T]:
    """Send a request that hangs ([sim:submit-hang=S]) from a thread, and ``look`` at the
    simulator 0.15 s in, while the answer has not left: the answer, the seconds it took,
    and what ``look`` saw."""
    result: dict[str, Any] = {}

    def slow() -> None:
        t0 = time.monotonic()
        result["resp"] = send(client.application.test_client())
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.15)
    assert "resp" not in result  # the answer has not left yet
    seen = look()
    thread.join()
    return result["resp"], result["elapsed"], seen


def record(client: FlaskClient, **params: Any) -> dict[str, Any]:
    resp = client.get("/_sim/record", query_string=params)
    assert resp.status_code == 200
    data: dict[str, Any] = resp.get_json()
    return data


def generation(client: FlaskClient, gen_id: str) -> dict[str, Any]:
    rows = [g for g in record(client, summary=1)["generations"] if g["id"] == gen_id]
    assert len(rows) == 1
    return rows[0]


def account_row(rec: dict[str, Any], protocol: str, account: str) -> dict[str, Any]:
    rows = [a for a in rec["accounts"] if (a["protocol"], a["account"]) == (protocol, account)]
    assert len(rows) == 1, rec["accounts"]
    return rows[0]


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    """(channels, sample width, rate, frames) read back with the stdlib."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()

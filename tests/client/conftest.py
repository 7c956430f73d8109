"""One real Chorus for the client's end-to-end tests: gunicorn web processes, a worker, the
webhooks worker, the scheduler and the simulator, on a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from app.db import Database
from app.sim.server import start_background
from chorus_client import Client
from config import load_settings
from tests.conftest import Processes, clear_redis, funded_key, own_chorus
from tests.serving import start_web


@dataclass
class Chorus:
    base: str
    db: Database
    env: dict[str, str]
    procs: Processes

    def client(self, org: str, amount: int = 1_000_000, **kwargs: Any) -> Client:
        """A client with a key of a new org holding ``amount`` minor units."""
        return Client(self.base, funded_key(self.db, org, amount), **kwargs)


@pytest.fixture(scope="package")
def chorus(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Chorus]:
    tmp = tmp_path_factory.mktemp("client")
    with own_chorus("client", redis_url, tmp) as (env, db):
        # Webhooks go to receivers on this machine.
        env = {**env, "ALLOW_PRIVATE_URLS": "true"}
        sim_url, stop_sim = start_background(load_settings(env))
        env["SIM_URL"] = sim_url
        clear_redis(env["REDIS_URL"])
        procs = Processes(env, tmp)
        try:
            base = start_web(procs, WEB_CONCURRENCY="1", WEB_THREADS="8")
            procs.worker()
            procs.webhooks_worker()
            procs.scheduler()
            procs.wait_first_round()
            yield Chorus(base, db, procs.env, procs)
        finally:
            procs.stop_all()
            stop_sim()

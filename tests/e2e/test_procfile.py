"""The production shape end to end: the Procfile under honcho, on the machine's Postgres and Redis.

Only what an operator runs: the release line against an empty database, then every long-running
process of the Procfile, each started by honcho exactly as its line says. Everything after the
setup commands (a key, some credit) goes through HTTP.

The module runs twice, once per broker Chorus supports: Redis (REDIS_URL alone), then RabbitMQ
(CELERY_BROKER_URL, a virtual host of this run's own; Redis stays for the rest). Why this
shape and few others run on both: tests/e2e/test_rabbitmq.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from config.celery import ALL_QUEUES
from config.topology import PROCESSES
from tests import rabbitmq
from tests.conftest import (
    GOOD_BODY,
    REDIS_PREFIX,
    ROOT,
    TEST_REDIS_URL,
    clear_redis,
    empty_database,
    wait_for,
)
from tests.serving import free_ports

pytestmark = pytest.mark.e2e

FLOWER_AUTH = "ops:flower-secret-for-tests"
RELEASE = [p.name for p in PROCESSES if p.one_shot]
LONG_RUNNING = [p.name for p in PROCESSES if not p.one_shot]
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


class Receiver(ThreadingHTTPServer):
    """A webhook consumer on a local socket: keeps each request's raw body and headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[bytes, dict[str, str]]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((body, dict(self.headers.items())))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    """What the shape's environment says of its broker: nothing (REDIS_URL's Redis), or a
    RabbitMQ virtual host emptied of what earlier tests left."""
    if request.param == "redis":
        return {}
    url: str = request.getfixturevalue("amqp_url")
    rabbitmq.purge(url)
    return {"CELERY_BROKER_URL": url}


@pytest.fixture(scope="module")
def release_database(broker: dict[str, str]) -> Iterator[str]:
    """A database with no tables at all: the release line must build it."""
    kind = "amqp" if broker else "redis"
    with empty_database(f"{os.getpid()}_procfile_{kind}") as url:
        yield url


class Honcho:
    """The Procfile run by honcho from the project's root, as an operator would."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.envfile = tmp_path / "chorus.env"
        self.envfile.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1",
        }
        self.log = tmp_path / "honcho.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "honcho", "-f", "Procfile", "-e", str(self.envfile), *args]

    def release(self) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv("start", *RELEASE),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            timeout=120,
        )

    def start(self, names: list[str]) -> None:
        self.proc = subprocess.Popen(
            self.argv("start", *names),
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, command: str) -> str:
        done = subprocess.run(
            self.argv("run", "sh", "-c", command),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return done.stdout.decode().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def shape_env(database_url: str, web_port: int, sim_port: int, var_dir: Path) -> dict[str, str]:
    """What every process of a test's Procfile shape reads: the test's database and Redis, two
    web processes, and a quick simulator on its own port."""
    base = f"http://127.0.0.1:{web_port}"
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": REDIS_PREFIX,
        "SECRET_KEY": "procfile-test-secret",
        "PUBLIC_URL": base,
        # honcho numbers ports from here, web first: see the Procfile's order.
        "PORT": str(web_port),
        "SIM_PORT": str(sim_port),
        "SIM_URL": f"http://127.0.0.1:{sim_port}",
        "SIM_LATENCY": "0.6",
        "SIM_JITTER": "0.1",
        "SIM_AUDIO_SECONDS": "2",
        "ALLOW_PRIVATE_URLS": "true",
        "CHORUS_VAR_DIR": str(var_dir),
        "WEB_CONCURRENCY": "2",
    }


@pytest.fixture(scope="module")
def shape(
    tmp_path_factory: pytest.TempPathFactory,
    broker: dict[str, str],
    release_database: str,
    receiver: Receiver,
) -> Iterator[dict[str, Any]]:
    """The Procfile's processes, started once for this module's tests on each broker."""
    tmp_path = tmp_path_factory.mktemp("procfile")
    clear_redis(TEST_REDIS_URL)
    receiver.received.clear()  # what the shape on the other broker was sent
    web_port, flower_port, sim_port = free_ports(3)
    base = f"http://127.0.0.1:{web_port}"
    honcho = Honcho(
        tmp_path,
        {
            **shape_env(release_database, web_port, sim_port, tmp_path / "var"),
            "FLOWER_PORT": str(flower_port),
            "FLOWER_BASIC_AUTH": FLOWER_AUTH,
            **broker,
        },
    )
    released = honcho.release()
    assert released.returncode == 0, released.stdout.decode()[-4000:]
    honcho.start(LONG_RUNNING)
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), 60, message="the API")
        key = honcho.run("chorus keys create --org procfile")
        honcho.run("chorus balance add --org procfile 10000")
        yield {
            "base": base,
            "flower": f"http://127.0.0.1:{flower_port}",
            "key": key,
            "honcho": honcho,
            "receiver": receiver,
        }
    finally:
        honcho.stop()
        if sys.exc_info()[0] is not None:
            sys.stderr.write(honcho.log.read_text(errors="replace")[-8000:])


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _headers(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def _finished(base: str, key: str, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = requests.get(
        f"{base}/v1/music/generations/{job_id}", headers=_headers(key), timeout=10
    ).json()
    return job if job["status"] in TERMINAL else None


def _available(base: str, key: str) -> int:
    balances = requests.get(f"{base}/v1/balance", headers=_headers(key), timeout=10).json()
    return int(next(b["available"] for b in balances["data"] if b["currency"] == "CNY"))


def test_the_procfile_serves_the_whole_contract(shape: dict[str, Any]) -> None:
    base, key, receiver = shape["base"], shape["key"], shape["receiver"]
    secret = requests.get(f"{base}/v1/webhooks/secret", headers=_headers(key), timeout=10).json()

    # Submit, follow it to SUCCEEDED, download the audio; its webhook reaches the receiver.
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    created = requests.post(
        f"{base}/v1/music/generations",
        json={**GOOD_BODY, "callback_url": hook, "webhook_events": ["music.generation.succeeded"]},
        headers=_headers(key),
        timeout=10,
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job = wait_for(lambda: _finished(base, key, job_id), 60, message="the job to end")
    assert job["status"] == "SUCCEEDED", job
    audio = requests.get(job["audio"], timeout=10)
    assert audio.status_code == 200
    assert audio.content[:4] == b"RIFF"

    delivered = wait_for(lambda: receiver.received, 30, message="the webhook")
    body, headers = delivered[0]
    event = Webhook(secret["key"]).verify(body, headers)
    assert event["type"] == "music.generation.succeeded"
    assert event["data"]["id"] == job_id
    # Links inside the payload point at the API, not at whatever port honcho gave the worker.
    assert event["data"]["urls"]["get"].startswith(shape["base"] + "/")

    # Prefer: wait answers with the finished job.
    waited = requests.post(
        f"{base}/v1/music/generations",
        json=GOOD_BODY,
        headers=_headers(key, Prefer="wait=30"),
        timeout=40,
    )
    assert waited.status_code == 201, waited.text
    assert waited.json()["status"] == "SUCCEEDED"

    # Cancel: the hold goes back to the balance.
    before = _available(base, key)
    slow = requests.post(
        f"{base}/v1/music/generations",
        json={**GOOD_BODY, "prompt": "Slow ballad [sim:latency=30]"},
        headers=_headers(key),
        timeout=10,
    ).json()
    assert _available(base, key) < before
    cancelled = requests.post(
        f"{base}/v1/music/generations/{slow['id']}/cancel", headers=_headers(key), timeout=10
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cost"]["state"] == "released"
    assert _available(base, key) == before


def test_flower_is_behind_basic_auth_everywhere(shape: dict[str, Any]) -> None:
    flower = shape["flower"]
    wait_for(lambda: _status(f"{flower}/healthcheck", auth=None) is not None, 60, message="Flower")
    user, password = FLOWER_AUTH.split(":", 1)
    for path in ("/", "/metrics", "/healthcheck", "/api/workers"):
        assert _status(f"{flower}{path}", auth=None) == 401, path
        assert _status(f"{flower}{path}", auth=(user, "wrong")) == 401, path
        assert _status(f"{flower}{path}", auth=(user, password)) == 200, path

    # No process shows the password on its command line.
    honcho: Honcho = shape["honcho"]
    assert honcho.proc is not None
    leaked = [pid for pid, cmdline in _cmdlines(os.getpgid(honcho.proc.pid)) if password in cmdline]
    assert leaked == []


def _status(url: str, auth: tuple[str, str] | None) -> int | None:
    try:
        return requests.get(url, auth=auth, timeout=5).status_code
    except requests.RequestException:
        return None


def _cmdlines(pgid: int) -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            raw = (entry / "cmdline").read_bytes()
        except (OSError, ProcessLookupError):
            continue
        yield int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace")


def test_chorus_status_sees_the_running_shape(shape: dict[str, Any]) -> None:
    def everyone_up() -> dict[str, Any] | None:
        data: dict[str, Any] = json.loads(shape["honcho"].run("chorus status --json"))
        # worker, worker_sync and webhooks each answer the broker's ping.
        workers = data["broker"]["workers"] or []
        return data if data["scheduler_leading"] and len(workers) >= 3 else None

    data = wait_for(everyone_up, 60, message="every worker and a scheduler leader")
    assert "error" not in data["broker"]
    # Every queue's depth, read from the broker (the queues are idle by now, or nearly).
    queues = data["broker"]["queues"]
    assert set(queues) == set(ALL_QUEUES) and all(isinstance(n, int) for n in queues.values())
    assert {a["id"] for a in data["accounts"]} >= {"sim-minimax", "sim-aimlapi"}

"""`chorus flower`: a real Flower process on Redis, with basic auth on every page and the
password on no command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REDIS_PREFIX, ROOT, wait_for

PASSWORD = "flower-test-pw-7f3a"
PAGES = ["/", "/workers", "/metrics", "/healthcheck", "/api/workers", "/static/css/flower.css"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": REDIS_PREFIX,
        "CHORUS_VAR_DIR": str(tmp_path / "var"),
        "FLOWER_BASIC_AUTH": f"ops:{PASSWORD}",
        "FLOWER_PORT": str(port),
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "flower"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "flower.log").read_text()
        try:
            requests.get(base, timeout=2)
        except requests.ConnectionError:
            return False
        return True

    try:
        wait_for(up, timeout=60, message="flower to listen")
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def process_tree(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
    return pids


def test_every_page_needs_the_password(flower: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, _ = flower
    for page in PAGES:
        refused = requests.get(base + page, timeout=10, allow_redirects=False)
        assert refused.status_code == 401, page
        assert refused.headers["WWW-Authenticate"].startswith("Basic"), page
        wrong = requests.get(base + page, auth=("ops", "wrong"), timeout=10)
        assert wrong.status_code == 401, page
        allowed = requests.get(base + page, auth=("ops", PASSWORD), timeout=10)
        assert allowed.status_code == 200, page
    assert requests.get(base + "/healthcheck", auth=("ops", PASSWORD), timeout=10).text == "OK"


def test_the_password_is_on_no_command_line(flower: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, proc = flower
    pids = process_tree(proc.pid)
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline and PASSWORD.encode() not in cmdline, pid


def test_flower_refuses_to_start_without_credentials(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "flower"],
        cwd=ROOT,
        env={**env, "REDIS_URL": redis_url, "CHORUS_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FLOWER_BASIC_AUTH" in result.stderr and "Traceback" not in result.stderr

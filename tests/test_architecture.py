"""The shape of the code the issues fixed: import layers without cycles, modules a reader can
take in at one sitting, and one writer of a job's status."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
MAX_LINES = 500


def _modules() -> Iterator[Path]:
    return (path for path in sorted(APP.rglob("*.py")) if "migrations" not in path.parts)


def test_the_import_contracts_in_pyproject_are_kept() -> None:
    # import-linter reads its contracts (layers, no cycles between packages) from pyproject.toml.
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_module_in_app_is_longer_than_a_sitting() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _writes_status(call: ast.Call) -> bool:
    """``.values(status=…)`` or ``.values({Job.status: …})`` / ``{"status": …}``."""
    if any(keyword.arg == "status" for keyword in call.keywords):
        return True
    for arg in call.args:
        if isinstance(arg, ast.Dict):
            for key in arg.keys:
                if isinstance(key, ast.Attribute) and key.attr == "status":
                    return True
                if isinstance(key, ast.Constant) and key.value == "status":
                    return True
    return False


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines of ``update(Job)…values(status…)`` chains and of raw SQL setting a job's status."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "values"
            and _writes_status(node)
            and "update(Job)" in ast.unparse(node.func.value)
        ):
            found.append(node.lineno)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            sql = " ".join(node.value.upper().split())
            if "UPDATE JOBS" in sql and "SET STATUS" in sql:
                found.append(node.lineno)
    return found


def test_only_the_transition_writer_changes_a_jobs_status() -> None:
    writers = {
        str(path.relative_to(ROOT)): lines
        for path in _modules()
        if (lines := _status_writes(ast.parse(path.read_text())))
    }
    assert list(writers) == ["app/jobs/transitions.py"], writers


def test_the_status_scan_finds_both_forms_of_write() -> None:
    # The scan above must not pass because it sees nothing: each form it looks for, found.
    orm = "stmt = update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED)"
    mapping = "stmt = update(Job).values({Job.status: target, Job.lease: None})"
    raw = 'conn.execute(text("UPDATE jobs SET status = :s WHERE id = :id"))'
    other = "stmt = update(Job).values(lease_token=None)"
    assert [bool(_status_writes(ast.parse(source))) for source in (orm, mapping, raw, other)] == [
        True,
        True,
        True,
        False,
    ]

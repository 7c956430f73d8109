"""client/ builds into a wheel of its own that needs nothing of Chorus."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import ROOT


def test_the_client_wheel_builds_and_depends_on_requests_only(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT / "client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("chorus_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
        scripts = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        archive.extractall(tmp_path / "unpacked")
    assert meta["Name"] == "chorus-client"
    assert {Requirement(r).name for r in meta.get_all("Requires-Dist") or []} == {"requests"}
    assert "chorus-client = chorus_client.cli:main" in scripts
    packages = {n.split("/")[0] for n in names if not n.endswith((".dist-info/", ".dist-info"))}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"chorus_client"}
    assert "# Chorus client" in (meta.get_payload() or "")  # client/README.md is its long text

    # Every module of the wheel imports with Chorus's own packages made unimportable.
    check = (
        "import sys\n"
        "for name in ('app', 'config', 'workers'): sys.modules[name] = None\n"
        "import chorus_client, chorus_client.cli\n"
        "print(chorus_client.__file__)\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path / "unpacked",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(tmp_path / "unpacked" / "chorus_client" / "__init__.py")

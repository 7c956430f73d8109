"""The real ``chorus`` console script, run as a subprocess against the test database.

What an operator sees (CONTRACT §4): ``keys create`` prints only the key, ``balance show``
only the number, and nothing ever prints a key's secret again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database
from app.jobs.models import Job
from app.money import ledger
from app.money.models import LedgerEntry
from app.tenancy.keys import get_or_create_org
from app.tenancy.models import ApiKey
from tests.conftest import GOOD_BODY, ROOT, auth, lock_waiters

CHORUS = ROOT / ".venv" / "bin" / "chorus"
KEY_RE = re.compile(r"^chs_[A-Za-z0-9_-]{40,}$")
URL = "/v1/music/generations"


def chorus(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [str(CHORUS)] if CHORUS.exists() else [sys.executable, "-m", "app.cli"]
    result = subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def org_id(db: Database, name: str) -> int:
    with db.transaction() as session:
        return get_or_create_org(session, name).id


# ------------------------------------------------------------------ keys


def test_keys_create_prints_only_a_working_key(
    env: dict[str, str], db: Database, client: Any
) -> None:
    result = chorus(env, "keys", "create", "--org", "acme", "--label", "ci")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    key = lines[0]
    assert KEY_RE.match(key), key
    assert key not in result.stderr
    # It works, for the org it was made for, which was created on the way.
    response = client.get("/v1/balance", headers=auth(key))
    assert response.status_code == 200, response.get_json()
    with db.session() as session:
        (row,) = session.scalars(sa.select(ApiKey)).all()
    assert row.label == "ci" and key.startswith(row.display_prefix)
    # A second key is a different one.
    again = chorus(env, "keys", "create", "--org", "acme").stdout.strip()
    assert KEY_RE.match(again) and again != key


def test_keys_list_shows_the_prefix_never_the_secret(env: dict[str, str], db: Database) -> None:
    first = chorus(env, "keys", "create", "--org", "acme", "--label", "laptop").stdout.strip()
    second = chorus(env, "keys", "create", "--org", "acme").stdout.strip()
    other = chorus(env, "keys", "create", "--org", "globex").stdout.strip()
    result = chorus(env, "keys", "list", "--org", "acme")
    listing = result.stdout + result.stderr
    for secret in (first, second, other):
        assert secret not in listing
        # Nor any part of it beyond the display prefix.
        assert secret[12:20] not in listing
    with db.session() as session:
        rows = session.scalars(sa.select(ApiKey).order_by(ApiKey.id)).all()
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout  # only acme's keys
    for line, row in zip(lines, rows[:2], strict=True):
        fields = line.split("\t")
        assert fields[0] == str(row.id)
        assert fields[1].startswith(row.display_prefix)
        assert fields[-1] == "revoked=-"
    assert first.startswith(rows[0].display_prefix) and "laptop" in lines[0]
    missing = chorus(env, "keys", "list", "--org", "nobody", check=False)
    assert missing.returncode != 0 and "nobody" in missing.stderr


def test_keys_revoke_makes_the_key_fail_with_403(
    env: dict[str, str], db: Database, client: Any
) -> None:
    doomed = chorus(env, "keys", "create", "--org", "acme").stdout.strip()
    kept = chorus(env, "keys", "create", "--org", "acme").stdout.strip()
    assert client.get("/v1/balance", headers=auth(doomed)).status_code == 200
    with db.session() as session:
        key_id = session.scalar(sa.select(ApiKey.id).where(ApiKey.display_prefix == doomed[:12]))
    result = chorus(env, "keys", "revoke", str(key_id))
    assert result.stdout == ""  # the confirmation goes to stderr
    response = client.get("/v1/balance", headers=auth(doomed))
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "invalid_api_key"
    assert client.post(URL, json=GOOD_BODY, headers=auth(doomed)).status_code == 403
    # The org's other key is untouched.
    assert client.get("/v1/balance", headers=auth(kept)).status_code == 200
    listing = chorus(env, "keys", "list", "--org", "acme").stdout.splitlines()
    assert "revoked=-" not in listing[0] and listing[1].endswith("revoked=-")
    # Revoking again is harmless; an unknown id is an error.
    chorus(env, "keys", "revoke", str(key_id))
    unknown = chorus(env, "keys", "revoke", "999999", check=False)
    assert unknown.returncode != 0 and "999999" in unknown.stderr


# ------------------------------------------------------------------ balance


def test_balance_add_then_show_prints_only_the_number(env: dict[str, str], db: Database) -> None:
    added = chorus(env, "balance", "add", "--org", "acme", "500")
    assert added.stdout == "500\n"
    shown = chorus(env, "balance", "show", "--org", "acme")
    assert shown.stdout == "500\n"
    assert chorus(env, "balance", "add", "--org", "acme", "250", "--note", "promo").stdout == (
        "750\n"
    )
    # A negative amount is an adjustment down (after "--", or click reads it as an option).
    assert chorus(env, "balance", "add", "--org", "acme", "--", "-50").stdout == "700\n"
    assert chorus(env, "balance", "show", "--org", "acme").stdout == "700\n"
    # Below zero is refused, and changes nothing.
    refused = chorus(env, "balance", "add", "--org", "acme", "--", "-701", check=False)
    assert refused.returncode != 0 and "below zero" in refused.stderr
    assert chorus(env, "balance", "show", "--org", "acme").stdout == "700\n"
    # Currencies are separate balances.
    assert chorus(env, "balance", "add", "--org", "acme", "--currency", "usd", "9").stdout == "9\n"
    assert chorus(env, "balance", "show", "--org", "acme", "--currency", "USD").stdout == "9\n"
    # Every change is in the ledger, and the ledger adds up.
    org = org_id(db, "acme")
    with db.session() as session:
        assert ledger.recompute(session, org, "CNY") == ledger.balance(session, org, "CNY")
        kinds = session.scalars(sa.select(LedgerEntry.kind).order_by(LedgerEntry.id)).all()
    assert kinds == ["topup", "topup", "adjustment", "topup"]
    unknown = chorus(env, "balance", "show", "--org", "nobody", check=False)
    assert unknown.returncode != 0 and "nobody" in unknown.stderr and unknown.stdout == ""


def test_balance_add_takes_a_negative_amount_as_written(env: dict[str, str], db: Database) -> None:
    chorus(env, "balance", "add", "--org", "acme", "500")
    assert chorus(env, "balance", "add", "--org", "acme", "-100", check=False).stdout == "400\n"


def test_a_downward_adjustment_racing_a_submit_never_goes_below_zero(
    env: dict[str, str], db: Database
) -> None:
    org = org_id(db, "acme")
    with db.transaction() as session:
        ledger.credit(session, org, "CNY", 500)
    # A submit holds ¥1 under the balance row lock and has not committed yet...
    submit = db.session()
    submit.begin()
    assert ledger.hold(
        submit, org_id=org, currency="CNY", price=100, min_balance=0, job_id="luid_racing"
    )
    # ...while the operator takes the whole (committed) balance away.
    argv = [str(CHORUS)] if CHORUS.exists() else [sys.executable, "-m", "app.cli"]
    operator = subprocess.Popen(
        [*argv, "balance", "add", "--org", "acme", "--", "-500"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and operator.poll() is None and not lock_waiters(db):
            time.sleep(0.05)
        submit.commit()
        submit.close()
        out, err = operator.communicate(timeout=60)
    finally:
        if operator.poll() is None:
            operator.kill()
            operator.wait(timeout=10)
    with db.session() as session:
        stored = ledger.balance(session, org, "CNY")
    assert stored.available >= 0, (stored, operator.returncode, out, err)


# ------------------------------------------------------------------ usage


@pytest.mark.usefixtures("catalog")
def test_usage_prints_a_header_and_rows(env: dict[str, str], db: Database, client: Any) -> None:
    key = chorus(env, "keys", "create", "--org", "acme").stdout.strip()
    chorus(env, "balance", "add", "--org", "acme", "1000")
    empty = chorus(env, "usage", "--org", "acme").stdout.splitlines()
    header = "date\tmodel\tjobs\tsucceeded\taudio_seconds\tamount\tcurrency"
    assert empty == [header]
    ids = []
    for _ in range(3):
        response = client.post(URL, json=GOOD_BODY, headers=auth(key))
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    with db.transaction() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == ids[0])
            .values(status="SUCCEEDED", audio_duration_ms=2500)
        )
        ledger.settle(session, ids[0], capture=True)
        session.execute(sa.update(Job).where(Job.id == ids[1]).values(status="FAILED"))
        ledger.settle(session, ids[1], capture=False)
        created = session.scalar(sa.select(Job.created_at).where(Job.id == ids[0]))
        assert created is not None
        # All on one day, even if the test runs across midnight (UTC).
        session.execute(sa.update(Job).values(created_at=created))
    today = created.date().isoformat()
    lines = chorus(env, "usage", "--org", "acme").stdout.splitlines()
    assert lines == [header, f"{today}\tmusic-2.6\t3\t1\t2.5\t100\tCNY"]
    # An explicit range that excludes the day shows the header alone.
    past = chorus(env, "usage", "--org", "acme", "--from", "2000-01-01", "--to", "2000-01-31")
    assert past.stdout.splitlines() == [header]
    bad = chorus(env, "usage", "--org", "acme", "--from", "yesterday", check=False)
    assert bad.returncode != 0 and "--from" in bad.stderr
    unknown = chorus(env, "usage", "--org", "nobody", check=False)
    assert unknown.returncode != 0 and "nobody" in unknown.stderr


# ------------------------------------------------------------------ catalog


BAD_CATALOGS = {
    "not-yaml": "models: [unclosed\n  - name: x: y:\n",
    "unknown-provider": (
        "accounts:\n  - id: a\n    provider: nosuchprovider\n    base_url: http://x\n"
    ),
    "missing-name": "models:\n  - upstream_model: m\n    price: 1\n",
    "negative-price": "models:\n  - name: m\n    upstream_model: m\n    price: -5\n",
}


@pytest.mark.parametrize("case", sorted(BAD_CATALOGS))
def test_catalog_load_of_a_bad_file_fails_readably(
    env: dict[str, str], db: Database, tmp_path: Path, case: str
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(BAD_CATALOGS[case])
    result = chorus(env, "catalog", "load", str(path), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    assert str(path) in result.stderr
    with db.session() as session:
        assert session.scalar(sa.text("SELECT count(*) FROM models")) == 0


def test_catalog_load_of_a_missing_file_fails_readably(
    env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    result = chorus(env, "catalog", "load", str(tmp_path / "nope.yaml"), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr


def test_catalog_load_of_the_default_file_succeeds_and_sets_prices(
    env: dict[str, str], db: Database
) -> None:
    result = chorus(env, "catalog", "load", str(ROOT / "config" / "catalog.yaml"))
    assert result.stdout == "" and "models" in result.stderr
    with db.session() as session:
        price = session.execute(
            sa.text("SELECT price, currency FROM models WHERE name = 'music-2.6'")
        ).one()
    assert tuple(price) == (100, "CNY")


# ------------------------------------------------------------------ release


def test_release_migrates_and_loads_the_catalog(env: dict[str, str], db: Database) -> None:
    from app.catalog.models import Model

    result = chorus(env, "release")
    assert "models" in result.stderr, result.stderr
    with db.session() as session:
        names = set(session.scalars(sa.select(Model.name)))
    assert "music-2.6" in names
    # Run again (every deploy does): nothing is duplicated.
    chorus(env, "release")
    with db.session() as session:
        assert len(list(session.scalars(sa.select(Model.name)))) == len(names)


# ------------------------------------------------------------------ processes


def test_the_process_commands_are_the_scheduler_and_three_workers(env: dict[str, str]) -> None:
    listed = chorus(env, "--help").stdout
    assert "scheduler" in listed and "worker" in listed
    # Beat is gone: the scheduler replaced it.
    gone = chorus(env, "beat", check=False)
    assert gone.returncode != 0 and "No such command" in gone.stderr
    both = chorus(env, "worker", "--sync", "--webhooks", check=False)
    assert both.returncode == 2 and "pick one" in both.stderr
    assert "--webhooks" in chorus(env, "worker", "--help").stdout

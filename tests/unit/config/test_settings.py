"""What config/settings.py accepts for the broker and the database URLs, and what it derives."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import load_settings
from tests.conftest import ROOT

POOLER = "postgresql://chorus:pw@pgbouncer:6432/chorus"
SERVER = "postgresql://chorus:pw@postgres:5432/chorus"


@pytest.mark.parametrize(
    ("environ", "kind"),
    [
        ({}, "filesystem"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "redis"),
        ({"CELERY_BROKER_URL": "rediss://cache.example:6380/0"}, "redis"),
        ({"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}, "amqp"),
        ({"CELERY_BROKER_URL": "amqps://u:p@mq.example:5671/chorus"}, "amqp"),
        # A broker of its own beside the Redis of rate limits and wake-ups.
        (
            {"REDIS_URL": "redis://h:6379/0", "CELERY_BROKER_URL": "amqp://u:p@mq:5672/"},
            "amqp",
        ),
    ],
)
def test_the_supported_brokers(environ: dict[str, str], kind: str) -> None:
    assert load_settings(environ).broker_kind == kind


@pytest.mark.parametrize("url", ["sqs://key:secret@", "memory://", "mongodb://h/db", "nonsense"])
def test_another_broker_is_refused_without_showing_its_url(url: str) -> None:
    with pytest.raises(ValueError, match="CELERY_BROKER_URL must be") as refused:
        load_settings({"CELERY_BROKER_URL": url})
    assert "secret" not in str(refused.value)


def test_chorus_says_which_setting_is_wrong_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "topology", "list"],
        cwd=ROOT,
        env={"CELERY_BROKER_URL": "sqs://key:secret@", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "CELERY_BROKER_URL must be" in result.stderr and "Traceback" not in result.stderr


def test_without_a_direct_url_the_database_url_is_postgres_itself() -> None:
    from app.db import direct_database_url

    settings = load_settings({"DATABASE_URL": SERVER})
    assert settings.database_direct_url is None
    assert direct_database_url(settings) == settings.database_url
    assert settings.database_prepare is True


def test_behind_a_pooler_prepares_nothing_unless_asked() -> None:
    from app.db import direct_database_url

    settings = load_settings({"DATABASE_URL": POOLER, "DATABASE_DIRECT_URL": SERVER})
    assert direct_database_url(settings) == "postgresql+psycopg2://chorus:pw@postgres:5432/chorus"
    assert settings.database_url == "postgresql+psycopg2://chorus:pw@pgbouncer:6432/chorus"
    assert settings.database_prepare is False
    # A pooler in session mode keeps a session's prepared statements: it may say so.
    asked = {"DATABASE_URL": POOLER, "DATABASE_DIRECT_URL": SERVER, "DATABASE_PREPARE": "true"}
    assert load_settings(asked).database_prepare is True
    # The same URL twice is no pooler.
    same = load_settings({"DATABASE_URL": SERVER, "DATABASE_DIRECT_URL": SERVER})
    assert same.database_prepare is True
    driver = SERVER.replace("postgresql://", "postgresql+psycopg2://")
    spelled = load_settings({"DATABASE_URL": SERVER, "DATABASE_DIRECT_URL": driver})
    assert spelled.database_prepare is True


def test_migrations_and_the_schedulers_lock_use_the_direct_url(tmp_path: object) -> None:
    from app.dbmigrate import alembic_config
    from workers import make_celery
    from workers.scheduler import PostgresLeadership, Scheduler

    settings = load_settings(
        {"DATABASE_URL": POOLER, "DATABASE_DIRECT_URL": SERVER, "CHORUS_VAR_DIR": str(tmp_path)}
    )
    direct = "postgresql+psycopg2://chorus:pw@postgres:5432/chorus"
    assert alembic_config(settings).get_main_option("sqlalchemy.url") == direct
    leadership = Scheduler(make_celery(settings)).leadership
    assert isinstance(leadership, PostgresLeadership)
    assert leadership._url.render_as_string(hide_password=False) == direct


@pytest.mark.parametrize(("idle", "overflow"), [(None, 40), ("2", 48)])
def test_pools_keep_database_pool_idle_open_and_the_same_most(
    idle: str | None, overflow: int
) -> None:
    from app.db import Database

    environ = {"DATABASE_URL": SERVER, **({"DATABASE_POOL_IDLE": idle} if idle else {})}
    db = Database(load_settings(environ))
    for engine in (db.engine, db.reader):  # made without connecting
        assert engine.pool.size() + engine.pool._max_overflow == 50  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == overflow  # type: ignore[attr-defined]
        engine.dispose()

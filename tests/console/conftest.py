"""The ops console's fixtures: an app with operator logins, and a workload to show."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from app.db import Database
from app.jobs.engine import Engine
from config import Settings
from tests.console.support import Workload, make_workload, with_console
from tests.unit.providers.fake_adapter import Script


@pytest.fixture
def console_app(settings: Settings, db: Database) -> Any:
    from app.web import create_app

    flask_app = create_app(with_console(settings))
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def workload(
    console_app: Any,
    api_key: str,
    db: Database,
    settings: Settings,
    engine: Engine,
    script: Script,
    receiver: HTTPServer,
    catalog: dict[str, Any],
) -> Workload:
    return make_workload(
        console_app.test_client(),
        api_key,
        db,
        settings,
        engine,
        script,
        receiver,
        broken_account=catalog["accounts"][0]["id"],
    )

"""Fixtures of the tests of app.http."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from tests.unit.http.support import started


@pytest.fixture
def upstream() -> Iterator[HTTPServer]:
    """An upstream (or a webhook receiver) on loopback."""
    server = started()
    yield server
    server.stop()

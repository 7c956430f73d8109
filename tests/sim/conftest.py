"""Fixtures every simulator test module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from tests.sim.support import FakeClock, clocked_client, serving


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tclient(clock: FakeClock) -> FlaskClient:
    """A client whose simulator reads ``clock`` instead of the wall clock."""
    return clocked_client(clock)


@pytest.fixture
def live() -> Iterator[str]:
    """A simulator on a real socket (songs take 0.1 s); its base URL."""
    with serving(SIM_LATENCY="0.1") as base_url:
        yield base_url

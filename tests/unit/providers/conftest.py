"""Fixtures shared by the adapters' tests (and the adapter contract they each run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from tests.unit.providers.adapter_contract import RecordingSession


@pytest.fixture
def session() -> RecordingSession:
    """The adapter's session: real, and remembering every call's arguments."""
    return RecordingSession()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """The upstream's answers, each of which must be asked for by the test's end."""
    with responses.RequestsMock() as mock:
        yield mock

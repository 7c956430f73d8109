"""Each request's id (app/api/request_id.py): a sane ``X-Request-Id`` is kept, anything else
replaced; it is echoed on every answer, is ``/v2``'s ``requestId``, and is on the request's
log lines with the caller's org."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from config import logs
from tests.api.test_v2 import BODY, URL, aimlapi_error, submit
from tests.conftest import GOOD_BODY, auth

pytestmark = pytest.mark.usefixtures("catalog")


class Lines(logging.Handler):
    """The records of the app's loggers, through Chorus's own filter (as configured)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(logs.ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("chorus.jobs")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@pytest.mark.parametrize(
    "given",
    ["client-req-42", "7d0c4f2e-5b1a-4c8e-9f3d-2a6b8e1c0d4f", "a" * 128, "x!#$%&'*+-.^_`|~:/=@"],
)
def test_a_sane_request_id_is_echoed_as_given(client: Any, given: str) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": given})
    assert response.headers["X-Request-Id"] == given


@pytest.mark.parametrize(
    "given",
    ["", "a" * 129, "two words", "tab\there", "ümlaut", "new\nline", "\x7f"],
    ids=["empty", "too-long", "space", "tab", "non-ascii", "newline", "delete"],
)
def test_an_insane_request_id_is_replaced_by_a_fresh_one(client: Any, given: str) -> None:
    # werkzeug's test client refuses a newline in a header, as any HTTP client should; the
    # WSGI environ is what a server hands over, so it is set there.
    response = client.get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": given})
    echoed = response.headers["X-Request-Id"]
    assert echoed != given
    assert is_uuid(echoed)


def test_each_request_without_one_gets_its_own(client: Any) -> None:
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(is_uuid(i) for i in ids)


def test_errors_carry_it_too(client: Any) -> None:
    response = client.get("/v1/music/generations/luid_nope", headers={"X-Request-Id": "r-404"})
    assert response.status_code == 403
    assert response.headers["X-Request-Id"] == "r-404"


@pytest.mark.parametrize("given", ["v2-req-7", "not sane"])
def test_v2_request_id_in_an_error_body_is_the_echoed_one(
    client: Any, api_key: str, given: str
) -> None:
    response = submit(
        client, api_key, {**BODY, "model": "no-such-model"}, **{"X-Request-Id": given}
    )
    aimlapi_error(response, 400)
    assert response.get_json()["requestId"] == response.headers["X-Request-Id"]
    if given == "v2-req-7":
        assert response.headers["X-Request-Id"] == given

    refused = client.get(URL, query_string={"generation_id": "x"}, headers={"X-Request-Id": given})
    aimlapi_error(refused, 401)
    assert refused.get_json()["requestId"] == refused.headers["X-Request-Id"]


def test_the_submit_line_carries_the_request_id_and_the_org(
    client: Any, api_key: str, lines: Lines
) -> None:
    response = client.post(
        "/v1/music/generations", json=GOOD_BODY, headers={**auth(api_key), "X-Request-Id": "r-1"}
    )
    assert response.status_code == 202
    job = response.get_json()
    (line,) = [r for r in lines.records if getattr(r, "job_id", None) == job["id"]]
    assert line.getMessage() == f"job {job['id']} submitted (music-2.6)"
    assert line.request_id == "r-1"  # type: ignore[attr-defined]
    assert isinstance(line.org_id, int)  # type: ignore[attr-defined]
    # Nothing of the request stays bound once it has been answered.
    assert logs.current() == {}

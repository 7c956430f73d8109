"""Each refusal of the domain (``app.jobs.errors``) as ``/v1`` answers it: status, type, code,
param, message and headers, through HTTP on real Postgres.

The domain raises plain exceptions; ``app.api.errors.from_domain`` is the one place they get
their HTTP form. The other API tests check a refusal's effect (nothing stored, nothing held);
these pin its whole answer, so a slip in the mapping shows.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.db import Database
from tests.conftest import GOOD_BODY, auth, funded_key

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"
UNKNOWN = "luid_01m7z6rkxcmx0h7hnjr0bxppzc"


def refusal(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"model": "no-such-model"},
            {
                "code": "model_not_found",
                "param": "model",
                "message": "The model 'no-such-model' does not exist or is not published in "
                "catalog 'music_gen'.",
            },
        ),
        (
            {"model": "music-1.5", "prompt": "too short"},
            {
                "code": "invalid_value",
                "param": "prompt",
                "message": "'prompt' must be 10 to 300 characters for model music-1.5 (got 9).",
            },
        ),
        (
            {"reference_audio_url": "https://example.com/a.mp3"},
            {
                "code": "unsupported_parameter",
                "param": "reference_audio_url",
                "message": "Model music-2.6 does not take reference audio (reference_audio_url).",
            },
        ),
        (
            {"model": "minimax-music"},
            {
                "code": "missing_required_parameter",
                "param": "reference_audio_url",
                "message": "Missing required parameter: reference_audio_url (model minimax-music "
                "needs a reference track).",
            },
        ),
    ],
)
def test_a_request_the_model_refuses_is_400_naming_the_field(
    client: Any, api_key: str, patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post(URL, json={**GOOD_BODY, **patch}, headers=auth(api_key))
    assert refusal(response, 400) == {"type": "invalid_request_error", **expected}


def test_an_unfunded_org_is_429_insufficient_quota(client: Any, db: Database) -> None:
    broke = funded_key(db, "broke", amount=0)
    response = client.post(URL, json=GOOD_BODY, headers=auth(broke))
    assert refusal(response, 429) == {
        "type": "rate_limit_error",
        "code": "insufficient_quota",
        "param": None,
        "message": "You exceeded your current quota: the balance is too low for this model. "
        "Top up and try again.",
    }


@pytest.mark.env(ORG_MAX_ACTIVE_JOBS="1")
def test_one_job_over_the_cap_is_429_retry_in_10_seconds(client: Any, api_key: str) -> None:
    assert client.post(URL, json=GOOD_BODY, headers=auth(api_key)).status_code == 202
    response = client.post(URL, json=GOOD_BODY, headers=auth(api_key))
    assert refusal(response, 429) == {
        "type": "rate_limit_error",
        "code": "too_many_active_jobs",
        "param": None,
        "message": "Too many jobs in progress: at most 1 may be queued or running at once. "
        "Wait for some to finish.",
    }
    assert response.headers["Retry-After"] == "10"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # A read: the job comes back with the key (``app.api.auth``), or it is unknown.
        ("get", f"{URL}/{UNKNOWN}"),
        # The domain's own read (``app.jobs.queries.get_job``), after a refused cancel.
        ("post", f"{URL}/{UNKNOWN}/cancel"),
        ("get", f"{URL}/{UNKNOWN}/deliveries"),
    ],
)
def test_an_unknown_job_is_404_naming_the_id(
    client: Any, api_key: str, method: str, path: str
) -> None:
    response = getattr(client, method)(path, headers=auth(api_key))
    assert refusal(response, 404) == {
        "type": "not_found_error",
        "code": "not_found",
        "param": "id",
        "message": f"No music generation found with id '{UNKNOWN}'.",
    }


def test_cancelling_an_ended_job_is_409_naming_the_id(client: Any, api_key: str) -> None:
    job_id = client.post(URL, json=GOOD_BODY, headers=auth(api_key)).get_json()["id"]
    assert client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key)).status_code == 200
    response = client.post(f"{URL}/{job_id}/cancel", headers=auth(api_key))
    assert refusal(response, 409) == {
        "type": "conflict_error",
        "code": "job_not_cancellable",
        "param": "id",
        "message": f"Music generation '{job_id}' has already ended (CANCELLED) and cannot be "
        "cancelled.",
    }


def test_every_kind_of_refusal_has_its_http_answer() -> None:
    # A refusal the mapping does not know would reach the client as a 500.
    from app.api.errors import REFUSALS
    from app.jobs import errors

    def kinds(base: type[errors.Refused]) -> set[type[errors.Refused]]:
        return {k for sub in base.__subclasses__() for k in {sub, *kinds(sub)}}

    assert kinds(errors.Refused) == set(REFUSALS)

"""``/metrics`` on the web app: behind its own bearer token, absent without one, and the
requests it counts (by route, never by raw path), the jobs accepted and cancelled and the
money they held and released. Counters live in this test process's memory (no METRICS_DIR
is bound here), so each test reads how much they moved."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GOOD_BODY, auth
from tests.scrape import Samples, samples, value

TOKEN = "metrics-token-for-tests"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = "/v1/music/generations/<job_id>"


def scrape(client: Any) -> Samples:
    response = client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def test_without_a_token_configured_there_is_no_metrics_route(client: Any) -> None:
    response = client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.env(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", TOKEN],
)
def test_a_scrape_without_the_token_is_refused(client: Any, header: str | None) -> None:
    response = client.get("/metrics", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert b"chorus_" not in response.data


@pytest.mark.env(METRICS_TOKEN=TOKEN, METRICS_ENABLED="false")
def test_metrics_turned_off_serve_nothing_even_with_a_token(client: Any) -> None:
    assert client.get("/metrics", headers=SCRAPE).status_code == 404


@pytest.mark.env(METRICS_TOKEN=TOKEN)
def test_requests_jobs_and_money_are_counted(
    client: Any, api_key: str, catalog: dict[str, Any]
) -> None:
    before = scrape(client)
    created = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202, created.get_json()
    job = created.get_json()
    for _ in range(2):
        assert (
            client.get(f"/v1/music/generations/{job['id']}", headers=auth(api_key)).status_code
            == 200
        )
    assert (
        client.get("/v1/music/generations/luid_nothing", headers=auth(api_key)).status_code == 404
    )
    assert client.get("/no/such/path").status_code == 404
    cancelled = client.post(f"/v1/music/generations/{job['id']}/cancel", headers=auth(api_key))
    assert cancelled.status_code == 200, cancelled.get_json()
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "chorus_http_requests_total"
    assert moved(total, method="GET", route=ROUTE, status="200") == 2
    assert moved(total, method="GET", route=ROUTE, status="404") == 1
    assert moved(total, method="POST", route="/v1/music/generations", status="202") == 1
    assert moved(total, method="GET", route="unmatched", status="404") == 1
    # No sample is labelled with a job's id or a raw path.
    assert not any(job["id"] in str(labels) or "/no/such" in str(labels) for _, labels in after)
    latency = "chorus_http_request_duration_seconds_count"
    assert moved(latency, method="GET", route=ROUTE) == 3

    model = GOOD_BODY["model"]
    assert moved("chorus_jobs_accepted_total", model=model, surface="v1") == 1
    changes = "chorus_job_status_changes_total"
    assert moved(changes, model=model, status="CANCELLED", error_code="") == 1
    price, currency = job["cost"]["amount"], job["cost"]["currency"]
    assert price > 0
    for kind in ("hold", "release"):
        assert moved("chorus_money_operations_total", kind=kind, currency=currency) == 1
        assert moved("chorus_money_amount_minor_total", kind=kind, currency=currency) == price
    assert moved("chorus_money_operations_total", kind="capture", currency=currency) == 0
    # The scrape's own database view came along.
    assert value(after, "chorus_database_up") == 1

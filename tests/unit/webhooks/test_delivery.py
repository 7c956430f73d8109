"""Delivery end to end: real worker, webhook worker and scheduler processes, real receivers on local sockets.

The schedule is compressed (``WEBHOOK_SCHEDULE_SCALE``): its nine attempts over ~45 hours
take ~17 seconds here. Receivers are on 127.0.0.1, so these tests allow private targets.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from tests.conftest import GOOD_BODY, Processes, auth, wait_for
from tests.e2e.test_logs import json_lines

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.env(
        ALLOW_PRIVATE_URLS="true", WEBHOOK_SCHEDULE_SCALE="0.0001", WEBHOOK_TIMEOUT="3"
    ),
]

SUCCEEDED = "music.generation.succeeded"
RUNNING = "music.generation.running"


@pytest.fixture
def chorus(sim: str, catalog: Any, procs: Processes) -> Processes:
    procs.worker()
    procs.webhooks_worker()
    procs.scheduler()
    # Deliveries start only once their worker is up: the tests rely on each event going out
    # as it happens, not on a backlog of events sent together.
    wait_for(lambda: " ready." in procs.log("webhooks"), 120, 0.25, "the webhooks worker")
    return procs


def hook_url(server: HTTPServer, path: str = "/hook") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def submit(client: Any, key: str, **extra: Any) -> str:
    response = client.post("/v1/music/generations", json={**GOOD_BODY, **extra}, headers=auth(key))
    assert response.status_code == 202, response.json
    job_id: str = response.json["id"]
    return job_id


def deliveries(client: Any, key: str, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/music/generations/{job_id}/deliveries", headers=auth(key))
    assert response.status_code == 200, response.json
    data: list[dict[str, Any]] = response.json["data"]
    return data


def settled(client: Any, key: str, job_id: str, count: int, status: str | None = None) -> Any:
    """Waits for ``count`` deliveries of the job, none pending (or all in ``status``)."""

    def check() -> list[dict[str, Any]] | None:
        found = deliveries(client, key, job_id)
        done = [d for d in found if (d["status"] == status if status else d["status"] != "pending")]
        return found if len(found) == count and len(done) == count else None

    return check


def secret_of(client: Any, key: str) -> str:
    response = client.get("/v1/webhooks/secret", headers=auth(key))
    assert response.status_code == 200
    secret: str = response.json["key"]
    return secret


def test_events_arrive_signed_with_the_job_object(
    chorus: Processes, client: Any, api_key: str, receiver: HTTPServer
) -> None:
    secret = secret_of(client, api_key)
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    job_id = submit(client, api_key, callback_url=hook_url(receiver))
    found = wait_for(settled(client, api_key, job_id, 2, "delivered"), 60, 0.3, "2 deliveries")
    assert [d["type"] for d in found] == [RUNNING, SUCCEEDED]
    assert len(receiver.log) == 2
    bodies = []
    for request, _ in receiver.log:
        # The reference verifier accepts the headers and the exact bytes received.
        payload = Webhook(secret).verify(request.get_data(), dict(request.headers))
        bodies.append(payload)
        assert request.headers["webhook-id"] in {d["id"] for d in found}
    last = bodies[-1]
    assert last["type"] == SUCCEEDED and last["timestamp"].endswith("Z")
    assert last["data"]["id"] == job_id and last["data"]["status"] == "SUCCEEDED"
    assert last["data"]["object"] == "music.generation" and last["data"]["audio"]
    attempt = found[1]["attempts"][0]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["latency_ms"] >= 0 and attempt["attempt"] == 1

    # Redeliver: one more attempt, same webhook-id, logged as manual.
    url = f"/v1/music/generations/{job_id}/deliveries/{found[1]['id']}/redeliver"
    response = client.post(url, headers=auth(api_key))
    assert response.status_code == 202
    wait_for(lambda: len(receiver.log) == 3, 30, 0.2, "the redelivery")
    assert receiver.log[2][0].headers["webhook-id"] == found[1]["id"]
    again = wait_for(settled(client, api_key, job_id, 2, "delivered"), 30, 0.3, "settled")
    assert [a["manual"] for a in again[1]["attempts"]] == [False, True]


def test_other_tenants_see_nothing(
    chorus: Processes, client: Any, api_key: str, other_key: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/hook").respond_with_data("ok")
    job_id = submit(client, api_key, callback_url=hook_url(receiver))
    found = wait_for(settled(client, api_key, job_id, 2, "delivered"), 60, 0.3, "deliveries")
    response = client.get(f"/v1/music/generations/{job_id}/deliveries", headers=auth(other_key))
    assert response.status_code == 404
    url = f"/v1/music/generations/{job_id}/deliveries/{found[0]['id']}/redeliver"
    assert client.post(url, headers=auth(other_key)).status_code == 404


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_receiver_down_then_up_gets_it_with_the_same_id(
    chorus: Processes, client: Any, api_key: str
) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    job_id = submit(
        client,
        api_key,
        callback_url=f"http://127.0.0.1:{port}/hook",
        webhook_events=[SUCCEEDED],
    )

    def failed_twice() -> bool:
        found = deliveries(client, api_key, job_id)
        return bool(found) and len(found[0]["attempts"]) >= 2

    wait_for(failed_twice, 60, 0.3, "two failed attempts")
    first = deliveries(client, api_key, job_id)[0]
    assert first["status"] == "pending"
    assert all(a["status_code"] is None and a["error"] for a in first["attempts"])
    server = HTTPServer(host="127.0.0.1", port=port)
    server.expect_request("/hook").respond_with_data("ok")
    server.start()
    try:
        done = wait_for(settled(client, api_key, job_id, 1, "delivered"), 60, 0.3, "delivery")
        assert len(server.log) == 1
        assert server.log[0][0].headers["webhook-id"] == first["id"] == done[0]["id"]
        assert done[0]["attempts"][-1]["status_code"] == 200
    finally:
        server.stop()


def test_500_forever_is_dead_after_the_schedule(
    chorus: Processes, client: Any, api_key: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/hook").respond_with_data("no", status=500)
    job_id = submit(client, api_key, callback_url=hook_url(receiver), webhook_events=[SUCCEEDED])
    found = wait_for(settled(client, api_key, job_id, 1, "dead"), 90, 0.5, "a dead delivery")
    # Every attempt of the schedule was made: the first, then one per step.
    assert len(found[0]["attempts"]) == 9
    assert {a["status_code"] for a in found[0]["attempts"]} == {500}
    assert len(receiver.log) == 9
    assert {r.headers["webhook-id"] for r, _ in receiver.log} == {found[0]["id"]}
    assert found[0]["next_attempt_at"] is None

    # The webhooks worker's log tells the same story: each failed attempt, then the death.
    def told() -> list[dict[str, Any]]:
        lines = [r for r in json_lines(chorus.log("webhooks")) if r.get("job_id") == job_id]
        return lines if len(lines) == 9 else []

    lines = wait_for(told, 10, 0.2, "nine log lines")
    assert [(r["level"], r["attempt"], r["http_status"]) for r in lines] == [
        *(("INFO", n, 500) for n in range(1, 9)),
        ("WARNING", 9, 500),
    ]
    assert {r["delivery_id"] for r in lines} == {found[0]["id"]}
    assert "is dead after 9 attempts" in lines[-1]["message"]


def test_a_redirect_is_a_failure_and_is_not_followed(
    chorus: Processes, client: Any, api_key: str, receiver: HTTPServer
) -> None:
    elsewhere = HTTPServer(host="127.0.0.1", port=0)
    elsewhere.expect_request("/").respond_with_data("you should not be here")
    elsewhere.start()
    try:
        receiver.expect_request("/hook").respond_with_response(
            Response(status=302, headers={"Location": f"http://127.0.0.1:{elsewhere.port}/"})
        )
        job_id = submit(
            client, api_key, callback_url=hook_url(receiver), webhook_events=[SUCCEEDED]
        )

        def retried() -> Any:
            found = deliveries(client, api_key, job_id)
            return found if found and len(found[0]["attempts"]) >= 2 else None

        found = wait_for(retried, 60, 0.3, "two attempts")
        attempt = found[0]["attempts"][0]
        assert attempt["status_code"] == 302 and "not followed" in attempt["error"]
        assert found[0]["status"] in ("pending", "dead")
        assert elsewhere.log == []
    finally:
        elsewhere.stop()


def test_410_disables_the_endpoint(
    chorus: Processes, client: Any, api_key: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/hook").respond_with_data("gone", status=410)
    response = client.put(
        "/v1/webhooks/endpoint", json={"url": hook_url(receiver)}, headers=auth(api_key)
    )
    assert response.status_code == 200 and response.json["status"] == "enabled"
    # No callback_url: the org's endpoint. The song takes 3 s, so its `running` event has had
    # its 410 before `succeeded` exists (two events due at once may both be on their way).
    job_id = submit(client, api_key, prompt=f"{GOOD_BODY['prompt']} [sim:latency=3]")
    wait_for(
        lambda: (
            client.get("/v1/webhooks/endpoint", headers=auth(api_key)).json["status"] == "disabled"
        ),
        60,
        0.3,
        "the endpoint disabled",
    )
    found = wait_for(settled(client, api_key, job_id, 2, "disabled"), 60, 0.3, "both disabled")
    # One request reached the receiver; the later event was not sent.
    assert len(receiver.log) == 1
    assert sum(len(d["attempts"]) for d in found) == 1
    time.sleep(2)
    assert len(receiver.log) == 1
    # Setting the endpoint again enables it.
    response = client.put(
        "/v1/webhooks/endpoint", json={"url": hook_url(receiver)}, headers=auth(api_key)
    )
    assert response.json["status"] == "enabled"


class Sleepy(BaseHTTPRequestHandler):
    """A receiver that takes a minute to answer."""

    def do_POST(self) -> None:
        time.sleep(60)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_a_slow_receiver_times_out_while_others_go_on(
    chorus: Processes, client: Any, api_key: str, receiver: HTTPServer
) -> None:
    slow = ThreadingHTTPServer(("127.0.0.1", 0), Sleepy)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        receiver.expect_request("/hook").respond_with_data("ok")
        slow_job = submit(
            client,
            api_key,
            callback_url=f"http://127.0.0.1:{slow.server_address[1]}/hook",
            webhook_events=[SUCCEEDED],
        )
        fast_jobs = [
            submit(client, api_key, callback_url=hook_url(receiver), webhook_events=[SUCCEEDED])
            for _ in range(6)
        ]
        for job_id in fast_jobs:
            wait_for(settled(client, api_key, job_id, 1, "delivered"), 60, 0.3, "fast ones")

        def timed_out() -> Any:
            found = deliveries(client, api_key, slow_job)
            return found[0]["attempts"] if found and found[0]["attempts"] else None

        attempts = wait_for(timed_out, 60, 0.3, "the slow attempt to end")
        assert attempts[0]["status_code"] is None
        assert "no answer within 3 s" in attempts[0]["error"]
        # Cut off by the timeout, not by the receiver's minute.
        assert 2500 <= attempts[0]["latency_ms"] < 10_000
        payloads = [json.loads(r.get_data()) for r, _ in receiver.log]
        assert {p["data"]["id"] for p in payloads} == set(fast_jobs)
    finally:
        slow.shutdown()
        slow.server_close()


def test_submit_refuses_an_unknown_event_type(client: Any, api_key: str, catalog: Any) -> None:
    response = client.post(
        "/v1/music/generations",
        json={**GOOD_BODY, "callback_url": "http://127.0.0.1:9/x", "webhook_events": ["nope"]},
        headers=auth(api_key),
    )
    assert response.status_code == 400
    assert response.json["error"]["param"].startswith("webhook_events")


def test_callback_and_endpoint_requests_reach_werkzeug(receiver: HTTPServer) -> None:
    # The receiver fixture itself: a real socket, as the tests above rely on.
    receiver.expect_request("/ping").respond_with_handler(lambda r: Response("pong"))
    import requests

    assert requests.get(hook_url(receiver, "/ping"), timeout=5).text == "pong"
    assert isinstance(receiver.log[0][0], Request)

"""Webhooks that Chorus's own webhooks worker delivers, checked with ``verify_webhook``: by
the example receiver (client/examples/webhook_receiver.py, run as a real process) and on
the raw bytes a plain server received. A tampered body never passes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer

from chorus_client import WebhookVerificationError, verify_webhook
from tests.client.conftest import Chorus
from tests.conftest import GOOD_BODY, ROOT, wait_for
from tests.serving import free_port

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "client" / "examples" / "webhook_receiver.py"
MODEL, PROMPT, LYRICS = GOOD_BODY["model"], GOOD_BODY["prompt"], GOOD_BODY["lyrics"]


def org_secret(chorus: Chorus, key: str) -> str:
    answer = requests.get(
        f"{chorus.base}/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key"])


class Example:
    def __init__(self, url: str, out: Path, err: Path) -> None:
        self.url, self.out, self.err = url, out, err

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines()]


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[[str], Example]]:
    """Starts the example receiver with a secret; stops it after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(secret: str) -> Example:
        port = free_port()
        out, err = tmp_path / "receiver.out", tmp_path / "receiver.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(EXAMPLE), "--port", str(port)],
                    env={"CHORUS_WEBHOOK_SECRET": secret},
                    stdout=stdout,
                    stderr=stderr,
                )
            )
        wait_for(lambda: "listening" in err.read_text(), 30, message="the receiver to listen")
        return Example(f"http://127.0.0.1:{port}/hook", out, err)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_deliveries_verify_and_a_tampered_body_does_not(
    chorus: Chorus, example: Callable[[str], Example], receiver: HTTPServer
) -> None:
    client = chorus.client("hooks")
    secret = org_secret(chorus, client.api_key)
    hook = example(secret)

    # A real delivery to the example receiver: it verifies and prints the events.
    job = client.generate(MODEL, PROMPT, LYRICS, wait=60, callback_url=hook.url)
    printed = wait_for(
        lambda: [e for e in hook.events() if e["type"] == "music.generation.succeeded"],
        60,
        interval=0.2,
        message="the succeeded event at the example receiver",
    )
    assert printed[0]["id"] == job["id"] and printed[0]["status"] == "SUCCEEDED"
    assert printed[0]["webhook_id"]

    # A real delivery kept raw by a plain server, checked here byte for byte.
    receiver.expect_request("/raw", method="POST").respond_with_data("", status=204)
    second = client.generate(MODEL, PROMPT, LYRICS, wait=60, callback_url=receiver.url_for("/raw"))
    wait_for(
        lambda: any(b"succeeded" in r.get_data() for r, _ in receiver.log),
        60,
        interval=0.2,
        message="the succeeded event at the plain server",
    )
    request = next(r for r, _ in receiver.log if b"succeeded" in r.get_data())
    body, headers = request.get_data(), dict(request.headers.items())
    event = verify_webhook(body, headers, secret)
    assert event["type"] == "music.generation.succeeded"
    assert event["data"]["id"] == second["id"]

    tampered = body.replace(second["id"].encode(), job["id"].encode())
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        verify_webhook(tampered, headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, "whsec_" + secret[-8:] * 4)

    # The example receiver answers the same way to what it is sent.
    forward = {k: v for k, v in headers.items() if k.lower().startswith("webhook-")}
    forward["Content-Type"] = "application/json"
    assert requests.post(hook.url, data=body, headers=forward, timeout=10).status_code == 204
    assert requests.post(hook.url, data=tampered, headers=forward, timeout=10).status_code == 400
    assert "refused: no signature matches" in hook.err.read_text()

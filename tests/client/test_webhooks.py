"""``verify_webhook`` against signatures made by the reference Standard Webhooks library
(the one Chorus signs with), including the cases it must refuse."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from standardwebhooks import Webhook

from chorus_client import WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 24).decode()
BODY = json.dumps(
    {"type": "music.generation.succeeded", "timestamp": 1, "data": {"id": "luid_1"}}
).encode()


def signed(body: bytes = BODY, secrets: tuple[str, ...] = (SECRET,), at: float | None = None):
    when = dt.datetime.fromtimestamp(time.time() if at is None else at, tz=dt.UTC)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": " ".join(
            Webhook(s).sign("msg_1", when, body.decode()) for s in secrets
        ),
    }


def test_a_good_delivery_gives_its_event() -> None:
    event = verify_webhook(BODY, signed(), SECRET)
    assert event["type"] == "music.generation.succeeded"
    assert event["data"] == {"id": "luid_1"}


def test_any_of_several_signatures_is_enough() -> None:
    # During a rotation Chorus signs with the old and the new secret.
    headers = signed(secrets=(OTHER, SECRET))
    assert verify_webhook(BODY, headers, SECRET)["data"]["id"] == "luid_1"
    assert verify_webhook(BODY, headers, OTHER)["data"]["id"] == "luid_1"


def test_header_names_in_any_case() -> None:
    headers = {k.title(): v for k, v in signed().items()}
    assert verify_webhook(BODY.decode(), headers, SECRET)["type"]


def test_a_tampered_body_is_refused() -> None:
    headers = signed()
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(BODY.replace(b"luid_1", b"luid_2"), headers, SECRET)


def test_another_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(BODY, signed(secrets=(OTHER,)), SECRET)


@pytest.mark.parametrize("offset", [-301, 301])
def test_a_timestamp_over_five_minutes_away_is_refused(offset: int) -> None:
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(BODY, signed(at=time.time() + offset), SECRET)


def test_a_timestamp_within_five_minutes_passes() -> None:
    assert verify_webhook(BODY, signed(at=time.time() - 290), SECRET)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    headers = signed()
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(BODY, headers, SECRET)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify_webhook(BODY, headers, SECRET)


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-timestamp", "soon"), ("webhook-signature", "v2,abc v1"), ("webhook-signature", "")],
)
def test_malformed_headers_are_refused(field: str, value: str) -> None:
    headers = signed()
    headers[field] = value
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, SECRET)


def test_a_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="secret"):
        verify_webhook(BODY, signed(), "whsec_not base64!")

"""Signatures Chorus sends verify with the reference Standard Webhooks library."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook, WebhookVerificationError

from app.db import Database, utcnow
from app.tenancy.keys import get_or_create_org
from app.webhooks import signing
from app.webhooks.models import WebhookSecret

BODY = '{"type":"music.generation.succeeded","data":{"id":"luid_x"}}'


def test_a_signature_verifies_with_the_reference_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    headers = signing.headers([secret], "msg_1", utcnow(), BODY)
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "music.generation.succeeded",
        "data": {"id": "luid_x"},
    }


def test_a_tampered_body_or_an_old_timestamp_fails() -> None:
    secret = signing.new_secret()
    headers = signing.headers([secret], "msg_1", utcnow(), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("luid_x", "luid_y"), headers)
    old = signing.headers([secret], "msg_1", utcnow() - dt.timedelta(minutes=6), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, old)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)


def test_rotation_signs_with_both_secrets_until_the_old_one_expires(db: Database) -> None:
    with db.transaction() as session:
        org_id = get_or_create_org(session, "acme").id
        old = signing.current_secret(session, org_id)
        assert signing.current_secret(session, org_id) == old  # created once
        new, until = signing.rotate(session, org_id, overlap=3600)
        signing_now = signing.signing_secrets(session, org_id)
        later = signing.signing_secrets(session, org_id, now=until + dt.timedelta(seconds=1))
    assert new != old and signing_now == [new, old] and later == [new]
    headers = signing.headers(signing_now, "msg_2", utcnow(), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    # A receiver holding either secret accepts the delivery.
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)


def test_rotating_in_a_loop_keeps_three_secrets_signing(db: Database) -> None:
    with db.transaction() as session:
        org_id = get_or_create_org(session, "acme").id
        made = [signing.current_secret(session, org_id)]
        made += [signing.rotate(session, org_id, overlap=86_400)[0] for _ in range(50)]
        signing_now = signing.signing_secrets(session, org_id)
    # The newest three, the current one first; the 48 before them stopped signing at once.
    assert signing_now == made[:-4:-1]
    headers = signing.headers(signing_now, "msg_3", utcnow(), BODY)
    assert len(headers["webhook-signature"].split(" ")) == signing.MAX_LIVE_SECRETS == 3
    with pytest.raises(WebhookVerificationError):
        Webhook(made[-4]).verify(BODY, headers)


def test_rotations_are_bounded_per_hour_and_retired_rows_pruned(db: Database) -> None:
    now = utcnow()
    with db.transaction() as session:
        org_id = get_or_create_org(session, "acme").id
        made = [signing.current_secret(session, org_id)]
        while len(made) < signing.ROTATIONS_PER_HOUR:
            assert signing.next_rotation_at(session, org_id) is None
            made.append(signing.rotate(session, org_id, overlap=60)[0])
        # Five made within the hour: the next may come once the oldest of them is an hour old.
        allowed_at = signing.next_rotation_at(session, org_id)
        assert allowed_at is not None
        assert now + dt.timedelta(minutes=59) < allowed_at <= utcnow() + signing.ROTATION_WINDOW
        later = allowed_at + dt.timedelta(seconds=1)
        assert signing.next_rotation_at(session, org_id, now=later) is None
        # Secrets retired over an hour ago are deleted by the next rotation.
        session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.org_id == org_id, WebhookSecret.expires_at.is_not(None))
            .values(expires_at=now - dt.timedelta(hours=2))
        )
        new = signing.rotate(session, org_id, overlap=60)[0]
        left = session.scalars(
            select(WebhookSecret.secret).where(WebhookSecret.org_id == org_id)
        ).all()
    assert sorted(left) == sorted([made[-1], new])

"""Issuing and checking API keys.

Keys are 256-bit random secrets, so a fast hash (SHA-256) is enough to store them: there is
nothing to brute-force. The prefix makes a leaked key recognisable to secret scanners.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.tenancy.models import ApiKey, Org

KEY_PREFIX = "chs_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_org(session: Session, name: str) -> Org:
    org = session.scalar(select(Org).where(Org.name == name))
    if org is None:
        org = Org(name=name)
        session.add(org)
        session.flush()
    return org


def create_key(session: Session, org_name: str, label: str | None = None) -> str:
    """Create a key for ``org_name`` (creating the org if needed); returns the secret, once."""
    org = get_or_create_org(session, org_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(org_id=org.id, key_hash=hash_key(secret), display_prefix=secret[:12], label=label)
    )
    session.flush()
    return secret


# Built once: every request runs it, and a prebuilt statement skips building and hashing it.
_KEY_BY_HASH = select(ApiKey).where(ApiKey.key_hash == bindparam("key_hash"))


def authenticate(session: Session, presented: str | None) -> ApiKey | None:
    """The live key matching ``presented``, or None for a missing, unknown or revoked key."""
    if not presented:
        return None
    key = session.scalar(_KEY_BY_HASH, {"key_hash": hash_key(presented)})
    if key is None or key.revoked_at is not None:
        return None
    return key

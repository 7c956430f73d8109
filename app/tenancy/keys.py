"""Issuing and checking API keys.

Keys are 256-bit random secrets, so a fast hash (SHA-256) is enough to store them: there is
nothing to brute-force. The prefix makes a leaked key recognisable to secret scanners.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from app.db import HotStatement
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


class KeyHolder(Protocol):
    """What a request needs of its caller's key: the key, and the org it acts for.

    An ``ApiKey`` row is one; so is the lighter ``Caller`` the API authenticates into.
    """

    @property
    def id(self) -> int: ...

    @property
    def org_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Caller:
    id: int
    org_id: int


# Every request runs it: built once, and run as a HotStatement.
_LIVE_KEY = HotStatement(
    select(ApiKey.id, ApiKey.org_id).where(
        ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
    )
)


def authenticate(engine: Engine, presented: str | None) -> Caller | None:
    """The live key matching ``presented``, or None for a missing, unknown or revoked key.

    ``engine``'s connections should autocommit: the lookup is then one round trip.
    """
    if not presented:
        return None
    row = _LIVE_KEY.first(engine, {"key_hash": hash_key(presented)})
    return Caller(row.id, row.org_id) if row is not None else None

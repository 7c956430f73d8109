"""Bearer-key authentication shared by the /v1 blueprints."""

from __future__ import annotations

from typing import Any, cast

from flask import g, request
from sqlalchemy import Engine, Row, Table, and_, bindparam, select

from app.api.errors import ApiError
from app.db import HotStatement
from app.extensions import chorus
from app.jobs.errors import JobNotFound
from app.jobs.models import Job, JobRecord
from app.jobs.progress import POSITION, ahead_of
from app.jobs.queries import get_job
from app.tenancy.keys import Caller, authenticate, hash_key
from app.tenancy.models import ApiKey
from config import logs

_JOBS = cast(Table, Job.__table__)

# A read of one job (GET /v1/music/generations/{id}, GET /v2/generate/audio?generation_id=)
# is the API's commonest request. Its key and its job come back in one round trip, as a plain
# row (the job's columns under their own names): building an ORM object for a read that
# only turns into JSON would cost more than the query. A QUEUED job's place in its line
# comes with it (``ahead_of``: a count only for a QUEUED row).
_KEY_AND_JOB = HotStatement(
    select(
        ApiKey.id.label("key_id"),
        ApiKey.org_id.label("key_org_id"),
        ApiKey.revoked_at.label("key_revoked_at"),
        *_JOBS.c,
        ahead_of(_JOBS).label(POSITION),
    )
    .select_from(ApiKey)
    .outerjoin(_JOBS, and_(_JOBS.c.id == bindparam("job_id"), _JOBS.c.org_id == ApiKey.org_id))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


def presented_key() -> str | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else None


def require_key() -> None:
    """``before_request`` of every /v1 blueprint: the caller's live key, or 403.

    Keys are read on an autocommit connection (one round trip, no transaction) and never
    cached: revocation is checked on every request, so a revoked key is refused at once.
    """
    presented = presented_key()
    job_id = _job_read() if request.method == "GET" else None
    key = None
    if presented:
        reader = chorus().db.reader
        if job_id is None:
            key = authenticate(reader, presented)
        else:
            key = _authenticate_with_job(reader, presented, job_id)
    if key is None:
        # Counted against the address's failures (app.api.limits), after the answer.
        g.key_refused = True
        # The seed answers a missing or unknown key with 403 ("need login").
        raise ApiError(
            403,
            "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    g.api_key = key
    logs.add(org_id=key.org_id)


def read_job(job_id: str) -> JobRecord:
    """The caller's job ``job_id`` for a read, or ``JobNotFound``: the row ``require_key``
    fetched with the key when it did, else the ORM object."""
    preloaded: tuple[str, Row[Any] | None] | None = g.get("preloaded_job")
    if preloaded is None or preloaded[0] != job_id:
        return get_job(chorus().session(), g.api_key, job_id)
    if preloaded[1] is None:
        raise JobNotFound(job_id)
    return preloaded[1]


def _job_read() -> str | None:
    """The job id a GET reads, if it reads one."""
    view_args = request.view_args or {}
    job_id = view_args.get("job_id") or request.args.get("generation_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 40 or "\x00" in job_id:
        return None  # not an id any job has: the view answers for it
    return job_id


def _authenticate_with_job(reader: Engine, presented: str, job_id: str) -> Caller | None:
    """``authenticate``, reading the org's job ``job_id`` on the way (kept in ``g``)."""
    row = _KEY_AND_JOB.first(reader, {"key_hash": hash_key(presented), "job_id": job_id})
    if row is None or row.key_revoked_at is not None:
        return None
    # No job of this org under that id: the outer join gave NULLs.
    g.preloaded_job = (job_id, row if row.id is not None else None)
    return Caller(row.key_id, row.key_org_id)

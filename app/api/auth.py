"""Bearer-key authentication shared by the /v1 blueprints."""

from __future__ import annotations

from flask import g, request
from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.extensions import chorus
from app.jobs.models import Job
from app.tenancy.keys import authenticate, hash_key
from app.tenancy.models import ApiKey

# A read of one job (GET /v1/music/generations/{id}, GET /v2/generate/audio?generation_id=)
# is the API's commonest request. Its key and its job come back in one round trip: the job,
# when it is the org's, lands in the session, where the view's own lookup finds it.
_KEY_AND_JOB = (
    select(ApiKey, Job)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.org_id == ApiKey.org_id))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


def presented_key() -> str | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else None


def require_key() -> None:
    """``before_request`` of every /v1 blueprint: the caller's live key, or 403."""
    session = chorus().session()
    job_id = _job_read() if request.method == "GET" else None
    key = _authenticate_with_job(session, presented_key(), job_id) if job_id else None
    if job_id is None:
        key = authenticate(session, presented_key())
    if key is None:
        # The seed answers a missing or unknown key with 403 ("need login"). Revocation is
        # checked on every request, so a revoked key is refused at once.
        raise ApiError(
            403,
            "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    g.api_key = key


def _job_read() -> str | None:
    """The job id a GET reads, if it reads one."""
    view_args = request.view_args or {}
    job_id = view_args.get("job_id") or request.args.get("generation_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 40 or "\x00" in job_id:
        return None  # not an id any job has: the view answers for it
    return job_id


def _authenticate_with_job(session: Session, presented: str | None, job_id: str) -> ApiKey | None:
    """``authenticate``, loading the org's job ``job_id`` into the session on the way."""
    if not presented:
        return None
    row = session.execute(_KEY_AND_JOB, {"key_hash": hash_key(presented), "job_id": job_id}).first()
    if row is None or row[0].revoked_at is not None:
        return None
    key: ApiKey = row[0]
    # The session's identity map holds objects weakly: keep the job alive for the view.
    g.preloaded_job = row[1]
    return key

"""The job object clients see (CONTRACT §1a), built by hand: it is on the hot GET path."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import quote

from flask import current_app, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.jobs.models import JobRecord
from app.jobs.status import JobStatus
from app.storage import AudioStorage, AudioTooLarge, StorageUnavailable

log = logging.getLogger(__name__)


def _unix(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def audio_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="chorus-audio")


def audio_url(job: JobRecord) -> str:
    """A fresh, expiring link to Chorus's own copy; re-signed on every read of the job."""
    token = audio_signer().dumps(job.id)
    return url_for("files.audio", token=token, _external=True)


def job_from_token(token: str, max_age: int) -> str | None:
    try:
        job_id = audio_signer().loads(token, max_age=max_age)
    except BadSignature:
        return None
    return job_id if isinstance(job_id, str) else None


def hex_audio(job: JobRecord, storage: AudioStorage, max_bytes: int) -> str | None:
    """MiniMax's hex output: the audio itself, hex-encoded, read from either backend.

    The read is capped at ``max_bytes`` (AUDIO_MAX_BYTES, which also capped the download), so
    a job object never pulls an unbounded file into memory. A file above the cap (possible only
    if the cap was lowered since), gone, or unreadable yields None: the caller gives the link.
    """
    try:
        return storage.read_bytes(job.audio_key or "", max_bytes=max_bytes).hex()
    except (AudioTooLarge, FileNotFoundError, StorageUnavailable) as exc:
        log.warning("job %s: no hex audio (%s); answering with the link", job.id, exc)
        return None


# A stand-in id: each job URL is its route's path built once by url_for around this mark,
# then filled in by a string replace (building it per read was a tenth of a GET's CPU).
_MARK = "chorus-job-id-mark"
_PATHS: dict[tuple[str, str], str] = {}


def job_url(endpoint: str, job_id: str) -> str:
    """``url_for(endpoint, job_id=job_id, _external=True)``, for a route taking only the id."""
    key = (endpoint, request.script_root)
    path = _PATHS.get(key)
    if path is None:
        path = _PATHS[key] = url_for(endpoint, job_id=_MARK)
    # What url_for puts before the path; werkzeug's own host_url costs more to build.
    origin = f"{request.scheme}://{request.host}"
    return origin + path.replace(_MARK, quote(job_id, safe=""))


def job_object(job: JobRecord, storage: AudioStorage | None = None) -> dict[str, Any]:
    purged = job.purged_at is not None
    succeeded = job.status == JobStatus.SUCCEEDED and job.audio_key is not None and not purged
    link = audio_url(job) if succeeded else None
    audio = link
    if link and storage is not None and (job.request or {}).get("output_format") == "hex":
        max_bytes: int = current_app.extensions["chorus"].settings.audio_max_bytes
        audio = hex_audio(job, storage, max_bytes) or link
    return {
        "id": job.id,
        "object": "music.generation",
        "model": job.model_name,
        "catelogid": job.catelogid,
        "status": job.status,
        "created": _unix(job.created_at),
        "started_at": _unix(job.started_at),
        "finished_at": _unix(job.finished_at),
        "audio": audio,
        "audio_info": {
            "format": job.audio_format,
            "sample_rate": job.audio_sample_rate,
            "bitrate": job.audio_bitrate,
            "channels": job.audio_channels,
            "duration_ms": job.audio_duration_ms,
            "size": job.audio_size,
        }
        # Kept on a purged job: the facts of what was made and charged outlive the file.
        if job.status == JobStatus.SUCCEEDED and job.audio_format is not None
        else None,
        "error": {"code": job.error_code, "message": job.error_message}
        if job.status == JobStatus.FAILED
        else None,
        "metadata": job.client_metadata or {},
        "cost": {
            "amount": job.price,
            "currency": job.currency,
            # Held while the job runs; charged on success; given back on failure or cancel.
            "state": "captured"
            if job.status == JobStatus.SUCCEEDED
            else "released"
            if JobStatus(job.status).terminal
            else "held",
        },
        "upstream": {"provider": job.provider, "account": job.account_id},
        # Set once retention removed the audio and the request's content (README, Retention).
        "purged_at": _unix(job.purged_at),
        "urls": {
            "get": job_url("generations.Generation", job.id),
            "audio": link,
            "content": job_url("generations.content", job.id) if succeeded else None,
        },
    }

"""The job object clients see (CONTRACT §1a), built by hand: it is on the hot GET path.

No Flask here: the API (``app.api.present``) and the webhooks (``app.webhooks.delivery``)
render the same object, each from its own base URL (the request's origin; ``PUBLIC_URL``).
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.jobs.models import JobRecord
from app.jobs.progress import Estimate, estimate
from app.jobs.status import JobStatus
from app.storage import AudioStorage, AudioTooLarge, StorageUnavailable
from config import Settings

log = logging.getLogger(__name__)

# The API's routes to a job and its audio (its views serve them at these paths), as
# string templates: a format per read costs far less than url_for (which cost a tenth of a GET).
GENERATION_PATH = "/v1/music/generations/{job_id}"
CONTENT_PATH = "/v1/music/generations/{job_id}/content"
AUDIO_PATH = "/v1/files/audio/{token}"
PREVIEW_PATH = "/v1/files/preview/{token}"


def _unix(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


@lru_cache(maxsize=4)
def audio_signer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="chorus-audio")


def audio_url(job_id: str, secret_key: str, base_url: str) -> str:
    """A fresh, expiring link to Chorus's own copy; re-signed on every read of the job."""
    token = audio_signer(secret_key).dumps(job_id)
    return base_url + AUDIO_PATH.format(token=quote(token, safe=""))


def preview_url(job_id: str, secret_key: str, base_url: str) -> str:
    """A fresh, expiring link to a running job's early audio (signed as the audio link is)."""
    token = audio_signer(secret_key).dumps(job_id)
    return base_url + PREVIEW_PATH.format(token=quote(token, safe=""))


def job_from_token(secret_key: str, token: str, max_age: int) -> str | None:
    """The job id an audio link was signed for; None if forged, or older than ``max_age``."""
    try:
        job_id = audio_signer(secret_key).loads(token, max_age=max_age)
    except BadSignature:
        return None
    return job_id if isinstance(job_id, str) else None


def job_url(base_url: str, template: str, job_id: str) -> str:
    """``base_url`` and a route's path (``GENERATION_PATH``, ``CONTENT_PATH``) for the job."""
    return base_url + template.format(job_id=quote(job_id, safe=""))


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


def render(
    job: JobRecord,
    settings: Settings,
    base_url: str,
    storage: AudioStorage | None = None,
    *,
    queue_position: int | None = None,
    progress: Estimate | None = None,
) -> dict[str, Any]:
    """The job object, its links under ``base_url`` (scheme://host and any path prefix, no
    trailing slash). With ``storage``, a job that asked for hex output gets its audio inline
    (``settings.audio_max_bytes`` caps the read); without, the link.

    ``queue_position`` and ``progress`` (``app.jobs.progress``) are read by the caller, which
    knows the database; without ``progress`` a running job's is unknown (null)."""
    if progress is None:
        progress = estimate(job.status, job.started_at, None, dt.datetime.now(dt.UTC))
    purged = job.purged_at is not None
    succeeded = job.status == JobStatus.SUCCEEDED and job.audio_key is not None and not purged
    link = audio_url(job.id, settings.secret_key, base_url) if succeeded else None
    audio = link
    if link and storage is not None and (job.request or {}).get("output_format") == "hex":
        audio = hex_audio(job, storage, settings.audio_max_bytes) or link
    return {
        "id": job.id,
        "object": "music.generation",
        "model": job.model_name,
        "catelogid": job.catelogid,
        "status": job.status,
        "created": _unix(job.created_at),
        "started_at": _unix(job.started_at),
        "finished_at": _unix(job.finished_at),
        # How many jobs are ahead of a QUEUED one in its line (0: next); null once it left.
        "queue_position": queue_position if job.status == JobStatus.QUEUED else None,
        # 0.0-1.0 and the expected end (unix seconds) while RUNNING; 1.0 once SUCCEEDED.
        "progress": progress.progress,
        "eta": _unix(progress.eta),
        # The client's own deadline (Cancel-After), if it set one.
        "cancel_after": _unix(job.cancel_after_at),
        "audio": audio,
        # The song as it is being made, while a streamed job runs (README, Early audio).
        "audio_preview": preview_url(job.id, settings.secret_key, base_url)
        if job.status == JobStatus.RUNNING and job.preview_format is not None and not purged
        else None,
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
        # attempts: how many times an upstream may have made (and billed) a song for this job.
        "upstream": {
            "provider": job.provider,
            "account": job.account_id,
            "attempts": job.upstream_attempts,
        },
        # Set once retention removed the audio and the request's content (README, Retention).
        "purged_at": _unix(job.purged_at),
        "urls": {
            "get": job_url(base_url, GENERATION_PATH, job.id),
            "audio": link,
            "content": job_url(base_url, CONTENT_PATH, job.id) if succeeded else None,
        },
    }

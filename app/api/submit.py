"""A submit as both surfaces make it: every check that writes nothing, then the job, its hold
and (with an ``Idempotency-Key``) the key and its answer in one transaction, then the
scheduler's doorbell."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from app import metrics
from app.api import cancel_after, idempotency
from app.api.webhooks import urls as webhook_urls
from app.extensions import chorus
from app.jobs import intake, reference_audio
from app.jobs.models import JobRecord

log = logging.getLogger("chorus.jobs")


def submit(
    args: dict[str, Any], answer: Callable[[JobRecord], Response], *, surface: str = "v1"
) -> tuple[JobRecord, Response]:
    """The stored job and ``answer(job)``, rendered before the commit so that it is stored
    with the job under the request's idempotency key. ``/v1`` takes a ``callback_url``;
    ``/v2`` (AIMLAPI's shape) has none. Both take ``Cancel-After``; ``/v1`` also its body
    field ``cancel_after``."""
    ext = chorus()
    # Read before anything is written, like every header of a submit.
    deadline = cancel_after.requested(request.headers, args.get(cancel_after.FIELD))
    settings = ext.settings

    def check_reference(url: str, bounds: intake.ReferenceBounds) -> None:
        # The fetch may take seconds: end the checks' read-only transaction first, so that
        # no database connection sits idle in it meanwhile.
        ext.commit()
        reference_audio.check(
            url,
            settings,
            min_seconds=bounds.min_seconds,
            max_seconds=bounds.max_seconds,
            max_bytes=bounds.max_bytes,
        )

    draft = intake.prepare(
        ext.session,
        g.api_key,
        args,
        deadline_seconds=settings.job_deadline_seconds,
        surface=surface,
        check_reference=check_reference,
        check_callback=lambda url: webhook_urls.check_param(url, settings, "callback_url"),
        offers=ext.offers,
        cancel_after=deadline,
    )
    keyed = idempotency.claim()
    job: JobRecord = intake.store(
        ext.session,
        g.api_key,
        draft,
        max_active_jobs=settings.org_max_active_jobs,
        recent_active=ext.recent_active,
        # The one-statement autocommit form would commit the job without the key.
        quick=None if keyed else ext.db.reader,
    )
    response = answer(job)
    idempotency.commit(response)
    ext.doorbell.ring()  # after the commit, never inside the submit's transaction
    # Counted once committed: the price is held in that very transaction (the ledger's hold
    # on the hottest path is a statement of its own, so it is counted here, not in the ledger).
    metrics.JOBS_ACCEPTED.labels(job.model_name, surface).inc()
    metrics.count_money("hold", [(job.currency, job.price)])
    log.info(
        "job %s submitted (%s)",
        job.id,
        job.model_name,
        extra={"job_id": job.id, "model": job.model_name, "surface": surface, "status": "QUEUED"},
    )
    return job, response

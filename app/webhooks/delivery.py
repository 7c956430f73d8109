"""Sending deliveries: one HTTP attempt per claimed row, on a bounded thread pool.

A Celery message only hands claims (delivery id, lease token) to this process; the attempts
run on the dispatcher's threads and the task returns at once, so a receiver that takes the
whole timeout holds one thread, never a worker slot that jobs need. Each attempt first swaps
the lease token (of two copies of one claim only one proceeds), sends, then records the
attempt and the next step in one transaction guarded by the fresh token. A worker dying after
the receiver answered but before that commit leaves a lease that lapses: the delivery is sent
again with the same ``webhook-id``, which is what at-least-once means.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import ssrfguard
from sqlalchemy import insert, select, update

from app import metrics
from app.db import Database, database_url, utcnow
from app.doorbell import doorbell
from app.http import guard
from app.http.retry_after import parse_retry_after
from app.jobs.models import Job
from app.jobs.present import render
from app.jobs.progress import ExpectedSeconds, for_job
from app.webhooks import outbox, signing
from app.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from config import Settings

log = logging.getLogger(__name__)

# Enough of a receiver's answer to let the connection be reused; the body is never stored
# nor shown (it would let a tenant read what a URL inside someone's network says).
READ_LIMIT = 64 * 1024
ERROR_LIMIT = 500


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        resolver: ssrfguard.Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.resolver = resolver
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        # Where the payload's links point; no request tells this process its own address.
        self.base_url = public_base(settings.public_url)
        # The lease a thread takes for one attempt: the timeout, with room for the writes.
        self.lease = dt.timedelta(seconds=settings.webhook_timeout * 2 + 30)
        # A running job's progress and eta, as its GET shows them (the model's expected time).
        self.expected_seconds = ExpectedSeconds(db.reader)

    # ------------------------------------------------------------------ dispatching

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:  # on first use, so a forked worker child builds its own
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.webhook_concurrency, thread_name_prefix="webhook"
            )
        return self._pool

    def submit(self, claims: Iterable[tuple[str, str]]) -> list[Future[str]]:
        """Queue one attempt per claim on the pool; returns without waiting."""
        return [self.pool.submit(self.attempt_safely, d, t) for d, t in claims]

    def claim(self) -> list[outbox.Claim]:
        """Lease the deliveries due now, for the scheduler to hand out."""
        # The claim's lease also covers the message's trip and the wait in a pool's queue.
        with self.db.transaction() as session:
            return outbox.claim_due(
                session,
                limit=self.settings.webhook_max_in_flight,
                max_in_flight=self.settings.webhook_max_in_flight,
                lease=self.lease,
            )

    def next_due(self) -> dt.datetime | None:
        """When the next pending delivery is due (after now), for the scheduler's sleep."""
        with self.db.session() as session:
            return outbox.next_due(session, utcnow())

    def attempt_safely(self, delivery_id: str, token: str) -> str:
        try:
            outcome = self.attempt(delivery_id, token)
            if outcome != "skipped":
                # A retry is scheduled, or room freed under the in-flight cap.
                doorbell(database_url(self.settings)).ring()
            return outcome
        except Exception:
            # A fault here (a bug, the database) must not kill the pool thread; the lease
            # lapses and the scheduler claims it again.
            log.exception("webhook delivery %s failed unexpectedly", delivery_id)
            return "error"

    # ------------------------------------------------------------------ one attempt

    def attempt(self, delivery_id: str, token: str) -> str:
        fresh = outbox.new_token()
        now = utcnow()
        with self.db.transaction() as session:
            delivery = session.scalars(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.lease_token == token,
                    WebhookDelivery.status == outbox.PENDING,
                )
                .values(lease_token=fresh, lease_until=now + self.lease)
                .returning(WebhookDelivery)
                .execution_options(synchronize_session=False)
            ).one_or_none()
            if delivery is None:
                return "skipped"
            job = session.get(Job, delivery.job_id)
            url = delivery.url
            if delivery.endpoint_id is not None:
                endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
                if endpoint is not None:
                    url = endpoint.url  # the endpoint's current URL, if it was changed since
                    if endpoint.disabled_at is not None and not delivery.manual:
                        self._settle(session, delivery, fresh, status=outbox.DISABLED)
                        return "disabled"
            elif not delivery.manual and self._gone_before(session, delivery):
                self._settle(session, delivery, fresh, status=outbox.DISABLED)
                return "disabled"
            secrets = signing.signing_secrets(session, delivery.org_id) or [
                signing.current_secret(session, delivery.org_id)
            ]
        if job is None:  # pragma: no cover - the foreign key makes this impossible
            return "skipped"
        body = self.body(delivery, job)
        outcome = self.send(url, signing.headers(secrets, delivery.id, utcnow(), body), body)
        settled = self._record(delivery, fresh, url, outcome)
        metrics.WEBHOOK_LATENCY.labels("delivered" if outcome.delivered else "failed").observe(
            outcome.latency_ms / 1000
        )
        metrics.WEBHOOK_ATTEMPTS.labels(settled).inc()
        return settled

    def _gone_before(self, session: Any, delivery: WebhookDelivery) -> bool:
        """Whether this job's callback URL already answered 410 Gone to an earlier event."""
        return (
            session.scalar(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.job_id == delivery.job_id,
                    WebhookDelivery.url == delivery.url,
                    WebhookDelivery.status == outbox.DISABLED,
                    WebhookDelivery.id != delivery.id,
                )
                .limit(1)
            )
            is not None
        )

    def body(self, delivery: WebhookDelivery, job: Job) -> str:
        """The payload: what happened (``type``, ``timestamp``) and the job as it is now.

        The job object is rendered at each attempt, so its audio link is freshly signed even
        for a retry hours later; ``type`` says which change this event is about.
        """
        payload = {
            "type": delivery.event_type,
            "timestamp": delivery.event_at.isoformat().replace("+00:00", "Z"),
            "data": render(
                job,
                self.settings,
                self.base_url,
                progress=for_job(job, self.expected_seconds, dt.datetime.now(dt.UTC)),
            ),
        }
        return json.dumps(payload, separators=(",", ":"))

    def http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = guard.session(self.settings, self.resolver)
        return session

    def send(self, url: str, headers: dict[str, str], body: str) -> Outcome:
        timeout = self.settings.webhook_timeout
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            # Stored URLs were checked when given; the rules may have changed since.
            guard.check_written(url, self.settings)
        except guard.RefusedURL as exc:
            return Outcome(None, elapsed(), f"address refused: {exc}"[:ERROR_LIMIT])
        try:
            # The guarded session resolves, checks and pins the address on this very attempt.
            with self.http().post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=(min(5.0, timeout), timeout),
                allow_redirects=False,
                stream=True,
            ) as response:
                read = 0
                for chunk in response.iter_content(8192):
                    read += len(chunk)
                    if read >= READ_LIMIT or time.monotonic() - started > timeout:
                        break
                code = response.status_code
                error = None
                if 300 <= code < 400:
                    target = response.headers.get("Location", "")[:200]
                    error = f"redirect to {target!r} not followed (update the URL instead)"
                elif not 200 <= code < 300:
                    error = f"HTTP {code}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return Outcome(code, elapsed(), error, retry_after if code >= 429 else None)
        except ssrfguard.SSRFGuardError as exc:
            return Outcome(None, elapsed(), f"address refused: {exc}"[:ERROR_LIMIT])
        except requests.Timeout:
            return Outcome(None, elapsed(), f"no answer within {timeout:g} s")
        except requests.ConnectionError as exc:
            return Outcome(None, elapsed(), f"connection failed: {_reason(exc)}"[:ERROR_LIMIT])
        except (requests.RequestException, OSError, ValueError) as exc:
            return Outcome(None, elapsed(), f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT])

    # ------------------------------------------------------------------ recording

    def _record(self, delivery: WebhookDelivery, token: str, url: str, outcome: Outcome) -> str:
        now = utcnow()
        attempts = delivery.attempt_count + 1
        values: dict[str, Any] = {
            "attempt_count": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "url": url,
        }
        if outcome.delivered:
            status, values["delivered_at"] = outbox.DELIVERED, now
        elif outcome.gone:
            status = outbox.DISABLED
        elif delivery.manual:
            # A redelivery is one attempt; the schedule is not started over.
            status = outbox.DEAD
        else:
            delay = outbox.retry_delay(self.settings, attempts, outcome.retry_after)
            if delay is None:
                status = outbox.DEAD
            else:
                status = outbox.PENDING
                values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
        with self.db.transaction() as session:
            session.execute(
                insert(WebhookAttempt).values(
                    delivery_id=delivery.id,
                    attempt=attempts,
                    manual=delivery.manual,
                    started_at=now - dt.timedelta(milliseconds=outcome.latency_ms),
                    status_code=outcome.status_code,
                    latency_ms=outcome.latency_ms,
                    error=outcome.error,
                )
            )
            if not self._settle(session, delivery, token, status=status, **values):
                return "lost"
            if outcome.gone:
                self._disable(session, delivery, now)
        fields = {
            "job_id": delivery.job_id,
            "org_id": delivery.org_id,
            "delivery_id": delivery.id,
            "attempt": attempts,
            "http_status": outcome.status_code,
        }
        what = f"webhook {delivery.id} ({delivery.event_type})"
        if status == outbox.DELIVERED:
            log.info("%s delivered, attempt %d", what, attempts, extra=fields)
        elif status == outbox.DEAD:
            log.warning(
                "%s is dead after %d attempts: %s", what, attempts, outcome.error, extra=fields
            )
        else:
            # A retry is due later, or the receiver said 410 Gone (disabled).
            log.info(
                "%s attempt %d failed (%s): %s", what, attempts, status, outcome.error, extra=fields
            )
        return status

    def _settle(
        self, session: Any, delivery: WebhookDelivery, token: str, *, status: str, **values: Any
    ) -> bool:
        if status != outbox.PENDING:
            values["next_attempt_at"] = None
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_token == token)
            .values(
                status=status,
                manual=False,
                lease_token=None,
                lease_until=None,
                updated_at=utcnow(),
                **values,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)

    def _disable(self, session: Any, delivery: WebhookDelivery, now: dt.datetime) -> None:
        """410 Gone: the target asked for no more. Stop what else was waiting for it."""
        reason = f"answered 410 Gone to delivery {delivery.id}"
        pending = update(WebhookDelivery).where(WebhookDelivery.status == outbox.PENDING)
        if delivery.endpoint_id is not None:
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == delivery.endpoint_id)
                .values(disabled_at=now, disabled_reason=reason, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            pending = pending.where(WebhookDelivery.endpoint_id == delivery.endpoint_id)
        else:
            pending = pending.where(
                WebhookDelivery.job_id == delivery.job_id,
                WebhookDelivery.url == delivery.url,
                WebhookDelivery.endpoint_id.is_(None),
            )
        session.execute(
            pending.values(status=outbox.DISABLED, next_attempt_at=None).execution_options(
                synchronize_session=False
            )
        )


def public_base(url: str) -> str:
    """``PUBLIC_URL`` as the base of the payload's links, written as the API writes its own:
    no trailing slash, and no port where it is the scheme's default."""
    parts = urlsplit(url.rstrip("/"))
    default = {"http": ":80", "https": ":443"}.get(parts.scheme)
    if default and parts.netloc.endswith(default):
        parts = parts._replace(netloc=parts.netloc.removesuffix(default))
    return urlunsplit(parts)


def _reason(exc: Exception) -> str:
    # urllib3 nests the useful part ("Connection refused") several exceptions deep.
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker
    return text[:200]

"""Lyrics on demand (``POST /v1/lyrics/generations``): one short upstream call, answered at once.

Not a job: nothing is queued, and the caller waits on the web thread. The money still moves as
a job's does, through the ledger: ``begin`` writes the call's row and holds its price in the
caller's transaction; the upstream is called with no transaction open; ``finish`` captures
(success) or releases (failure) in one more, which also stores the answer under the request's
``Idempotency-Key``. The ledger's unique (id, kind) settles each call once, whatever happens.

A process that dies between ``begin`` and ``finish`` leaves a ``pending`` row and its hold:
``release_abandoned`` (the scheduler's periodic purge) releases it once no call can still be
running. The upstream may have billed Chorus for that call; the tenant is not charged.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.catalog.models import AccountState, Route, UpstreamAccount
from app.db import Database, utcnow
from app.jobs.accounts import Accounts
from app.jobs.errors import InsufficientQuota, ModelNotFound
from app.jobs.intake import check_limits
from app.jobs.models import (
    LYRICS_FAILED,
    LYRICS_PENDING,
    LYRICS_SUCCEEDED,
    LyricsGeneration,
    new_lyrics_id,
)
from app.jobs.offers import Offer, find_model
from app.jobs.upstreams import Upstreams, measured
from app.money import ledger
from app.providers import get_adapter
from app.providers.base import ProviderError
from app.providers.minimax import MinimaxAdapter
from app.tenancy.keys import KeyHolder
from config import Settings

log = logging.getLogger(__name__)

CATEGORY = "lyrics_gen"
MODES = ("write_full_song", "edit")
# How long after its start a pending call is surely over (its own timeout is far shorter).
ABANDONED_AFTER = dt.timedelta(minutes=15)
# Calls under way at once per process; more wait their turn within their own timeout.
MAX_CALLS = 16


@dataclass(frozen=True)
class LyricsRequest:
    model: str
    mode: str
    prompt: str | None
    lyrics: str | None
    title: str | None


class LyricsFailed(Exception):
    """The upstream wrote nothing: ``code`` is a Chorus error code (upstream_timeout, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def find(session: Session, request: LyricsRequest) -> Offer:
    """The published lyrics model, with the request inside its limits, or a refusal."""
    model = find_model(session, request.model, CATEGORY)
    if model is None:
        raise ModelNotFound(request.model, CATEGORY)
    check_limits(model, {"prompt": request.prompt, "lyrics": request.lyrics})
    return model


def begin(session: Session, key: KeyHolder, model: Offer) -> LyricsGeneration:
    """Write the call's row and hold its price in ``session`` (``InsufficientQuota`` when the
    balance cannot); the caller commits before calling the upstream."""
    row = LyricsGeneration(
        id=new_lyrics_id(),
        org_id=key.org_id,
        api_key_id=key.id,
        model_id=model.model_id,
        model_name=model.model_name,
        price=model.price_for(key.org_id),
        currency=model.currency,
        status=LYRICS_PENDING,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    if model.owner_org_id != key.org_id and not ledger.hold(
        session,
        org_id=key.org_id,
        currency=model.currency,
        price=row.price,
        min_balance=model.min_balance,
        job_id=row.id,
    ):
        raise InsufficientQuota()
    return row


def finish(
    session: Session,
    row_id: str,
    *,
    result: dict[str, str] | None,
    account_id: str | None,
    error_code: str | None = None,
) -> bool:
    """Settle the call in ``session``: capture with a result, else release. False when it was
    settled already (``release_abandoned`` got there first): nothing moves then."""
    ended = session.execute(
        update(LyricsGeneration)
        .where(LyricsGeneration.id == row_id, LyricsGeneration.status == LYRICS_PENDING)
        .values(
            status=LYRICS_SUCCEEDED if result is not None else LYRICS_FAILED,
            result=result,
            account_id=account_id,
            error_code=error_code,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        return False
    ledger.settle(session, row_id, capture=result is not None)
    return True


def release_abandoned(db: Database, now: dt.datetime | None = None) -> int:
    """Release the holds of calls whose process died mid-call; returns how many."""
    cutoff = (now or utcnow()) - ABANDONED_AFTER
    released = 0
    with db.transaction() as session:
        ids = session.scalars(
            select(LyricsGeneration.id)
            .where(LyricsGeneration.status == LYRICS_PENDING, LyricsGeneration.created_at < cutoff)
            .limit(1000)
            .with_for_update(skip_locked=True)
        ).all()
        for row_id in ids:
            released += finish(
                session, row_id, result=None, account_id=None, error_code="abandoned"
            )
    if released:
        log.warning("released the holds of %d abandoned lyrics call(s)", released)
    return released


class LyricsWriter:
    """Calls the model's upstream accounts in route order, skipping those whose breaker is
    open, within ``LYRICS_TIMEOUT_SECONDS`` all told."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.upstreams = Upstreams(settings, db, get_adapter, dt.timedelta(seconds=60))
        self.accounts = Accounts(db)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def routes(self, session: Session, model: Offer) -> list[UpstreamAccount]:
        now = utcnow()
        accounts = session.scalars(
            select(UpstreamAccount)
            .join(Route, Route.account_id == UpstreamAccount.id)
            .outerjoin(AccountState, AccountState.account_id == UpstreamAccount.id)
            .where(
                Route.model_id == model.model_id,
                Route.category_id == model.category_id,
                UpstreamAccount.enabled.is_(True),
                UpstreamAccount.provider == MinimaxAdapter.provider,
                (AccountState.open_until.is_(None)) | (AccountState.open_until <= now),
            )
            .order_by(Route.priority)
        ).all()
        return list(accounts)

    def write(
        self, accounts: list[UpstreamAccount], request: LyricsRequest
    ) -> tuple[dict[str, str], str]:
        """The lyrics and the account that wrote them, or ``LyricsFailed``."""
        if not accounts:
            raise LyricsFailed("upstream_unavailable", "no upstream account can take it now")
        timeout = self.settings.lyrics_timeout_seconds
        future = self._executor().submit(self._write, accounts, request, timeout)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            # The call goes on in its thread (bounded by its own read timeout); its answer,
            # if any, is dropped: the tenant is not charged for it.
            raise LyricsFailed(
                "upstream_timeout", f"no lyrics within {timeout:g} seconds"
            ) from None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    MAX_CALLS, thread_name_prefix="chorus-lyrics"
                )
            return self._pool

    def _write(
        self, accounts: list[UpstreamAccount], request: LyricsRequest, timeout: float
    ) -> tuple[dict[str, str], str]:
        error: ProviderError | None = None
        for account in accounts:
            config = self.upstreams.config(account)
            config = replace(config, read_timeout=min(config.read_timeout, timeout))
            adapter: Any = self.upstreams.adapter(config)
            try:
                with measured(account.id, "lyrics"):
                    result = adapter.write_lyrics(
                        request.mode, request.prompt, request.lyrics, request.title
                    )
            except ProviderError as exc:
                log.warning("lyrics call on %s failed: %s", account.id, exc)
                error = exc
                if not exc.retryable:
                    break
                self.accounts.record_failure(account.id)
                if exc.maybe_created or exc.maybe_billed:
                    break  # it may have done the work: not asked of another account
                continue
            self.accounts.record_success(account.id)
            return result, account.id
        if error is None:
            raise LyricsFailed("upstream_unavailable", "no upstream account was tried")
        raise LyricsFailed(error.code, error.message)

"""Upstream accounts: which one takes a job, how many jobs each holds, and its breaker.

Slots are not counted in a column that could drift: an account's jobs in flight are the
rows that hold it (RUNNING, or QUEUED with a submit under way). A slot held by a crashed
worker therefore comes back by itself when its job ends, fails at its deadline, or is found
interrupted. Reserving a slot locks the account row first (an UPDATE), so concurrent workers
cannot both take the last one.

The circuit breaker lives in ``account_states``, shared by every worker: it opens after
transient failures of ``BREAKER_THRESHOLD`` different jobs with no success between (one job
that keeps failing counts once, so it cannot open the breaker alone), then lets one probe
through every ``PROBE_INTERVAL``; a probe's success closes it. A job kept from an open account
therefore waits at most one probe interval before it is tried again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from threading import Lock

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.cache import TTLCache, far_below_cap
from app.catalog.models import AccountState, Route, UpstreamAccount
from app.db import Database, utcnow
from app.jobs.models import Job
from app.jobs.status import FOLLOWED, JobStatus

log = logging.getLogger(__name__)

BREAKER_THRESHOLD = 5
# Open this long after the failure that opened it (or a failed probe); then one job at a time
# may probe for at most as long. Both bound how long a healthy job is held back.
PROBE_INTERVAL = dt.timedelta(seconds=15)
BREAKER_COOLDOWN = PROBE_INTERVAL
PROBE_WINDOW = PROBE_INTERVAL
PARK_WHEN_BUSY = dt.timedelta(seconds=15)


def holds_slot() -> ColumnElement[bool]:
    """The rows that occupy a slot on their account.

    A job cancelled, or past its client's deadline, keeps its slot while its upstream may
    still be making the song (``upstream_followup``): a useapi account makes one song at a
    time, and would refuse, or worse queue, a second one.
    """
    return or_(
        Job.status == JobStatus.RUNNING,
        and_(Job.status == JobStatus.QUEUED, Job.submitting_since.is_not(None)),
        and_(Job.status.in_(sorted(FOLLOWED)), Job.upstream_followup.is_not(None)),
    )


@dataclass(frozen=True)
class Reserved:
    account: UpstreamAccount


@dataclass(frozen=True)
class Wait:
    """No account can take the job now; look again at ``until`` (or sooner, when woken)."""

    reason: str  # "busy" or "breaker_open"
    until: dt.datetime


@dataclass(frozen=True)
class NoRoute:
    pass


Lost = object()  # the job's lease or state changed under us


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Per process: accounts seen healthy recently, so a success on the hot path does not
        # write (or even read) the breaker row every time.
        self._healthy_until: dict[str, float] = {}
        self._lock = Lock()
        self._routes: TTLCache[list[UpstreamAccount]] = TTLCache(ttl=5.0)
        self._open_accounts: TTLCache[frozenset[str]] = TTLCache(ttl=1.0)
        self._recent_in_flight: TTLCache[int] = TTLCache(ttl=1.0)

    # ------------------------------------------------------------------ choosing

    def candidates(self, session: Session, job: Job) -> list[UpstreamAccount]:
        """Enabled accounts on the job's routes, in fallback order."""
        return list(
            session.scalars(
                select(UpstreamAccount)
                .join(Route, Route.account_id == UpstreamAccount.id)
                .where(
                    Route.model_id == job.model_id,
                    Route.category_id == job.category_id,
                    UpstreamAccount.enabled.is_(True),
                )
                .order_by(Route.priority)
            )
        )

    def first_route(self, job: Job) -> UpstreamAccount | None:
        """The account a submit will most likely use (its first enabled route whose breaker is
        not open): it decides which worker makes the call. Cached for a moment; the
        reservation itself decides for real."""

        def load_routes() -> list[UpstreamAccount]:
            with self.db.session() as session:
                return self.candidates(session, job)

        def load_open() -> frozenset[str]:
            with self.db.session() as session:
                return frozenset(
                    session.scalars(
                        select(AccountState.account_id).where(AccountState.open_until > utcnow())
                    )
                )

        routes = self._routes.get((job.model_id, job.category_id), load_routes)
        is_open = self._open_accounts.get("open", load_open)
        return next((a for a in routes if a.id not in is_open), routes[0] if routes else None)

    def in_flight(self, session: Session, account_id: str) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.account_id == account_id, holds_slot())
            )
            or 0
        )

    def reserve(
        self, job: Job, *, lease_for: dict[str, dt.timedelta], default_lease: dt.timedelta
    ) -> Reserved | Wait | NoRoute | object:
        """Take a slot for ``job`` on the first account that has one, marking the submit as
        under way in the same transaction; or say why it must wait."""
        now = utcnow()
        waits: list[Wait] = []
        with self.db.transaction() as session:
            accounts = self.candidates(session, job)
            if not accounts:
                return NoRoute()
            for account in accounts:
                state = session.get(AccountState, account.id)
                if state and state.open_until and state.open_until > now:
                    waits.append(Wait("breaker_open", state.open_until))
                    continue
                if not self._far_below_cap(session, account):
                    # Lock the account: counting and taking a slot must not interleave.
                    session.execute(
                        update(UpstreamAccount)
                        .where(UpstreamAccount.id == account.id)
                        .values(max_in_flight=UpstreamAccount.max_in_flight)
                        .execution_options(synchronize_session=False)
                    )
                    if self.in_flight(session, account.id) >= account.max_in_flight:
                        waits.append(Wait("busy", now + PARK_WHEN_BUSY))
                        continue
                if state and state.open_until and not self._take_probe(session, account.id, now):
                    # Another job probes: look again when its probe window ends at the latest.
                    waits.append(Wait("breaker_open", state.probe_until or now + PROBE_WINDOW))
                    continue
                lease = lease_for.get(account.id, default_lease)
                result = session.execute(
                    update(Job)
                    .where(
                        Job.id == job.id,
                        Job.lease_token == job.lease_token,
                        Job.status == JobStatus.QUEUED,
                    )
                    .values(
                        submitting_since=now,
                        submit_sent_at=None,
                        submit_attempts=Job.submit_attempts + 1,
                        provider=account.provider,
                        account_id=account.id,
                        waiting_since=None,
                        lease_until=now + lease,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    return Lost
                return Reserved(account)
        return min(waits, key=lambda w: w.until)

    def _far_below_cap(self, session: Session, account: UpstreamAccount) -> bool:
        """Whether the account's jobs in flight, as this process counted them at most a
        second ago, are far below its cap (``far_below_cap``): then a submit takes its slot
        without the account lock and the count. Every submit to an account nearer its cap
        (a useapi account's cap is 1) is counted under the lock, exactly.
        """
        return far_below_cap(
            account.max_in_flight,
            lambda: self._recent_in_flight.get(
                account.id, lambda: self.in_flight(session, account.id)
            ),
        )

    def _take_probe(self, session: Session, account_id: str, now: dt.datetime) -> bool:
        """Half-open: exactly one caller at a time gets to try the account."""
        result = session.execute(
            update(AccountState)
            .where(
                AccountState.account_id == account_id,
                or_(AccountState.probe_until.is_(None), AccountState.probe_until < now),
            )
            .values(probe_until=now + PROBE_WINDOW, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        taken = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if taken:
            log.info(
                "circuit breaker half-open for upstream account %s: one probe goes through",
                account_id,
                extra={"account": account_id, "breaker": "half_open"},
            )
        return taken

    # ------------------------------------------------------------------ breaker

    def record_success(self, account_id: str) -> None:
        if self._healthy_until.get(account_id, 0.0) > time.monotonic():
            return
        closed = False
        with self.db.transaction() as session:
            state = session.get(AccountState, account_id)
            if state is not None and (state.failures or state.open_until or state.probe_until):
                closed = state.open_until is not None
                state.failures, state.open_until, state.probe_until = 0, None, None
        if closed:
            log.info(
                "circuit breaker closed for upstream account %s",
                account_id,
                extra={"account": account_id, "breaker": "closed"},
            )
        with self._lock:
            self._healthy_until[account_id] = time.monotonic() + 2.0

    def record_failure(self, account_id: str, *, repeat: bool = False) -> bool:
        """Count a transient failure; returns True when this one opened the breaker.

        ``repeat``: the failing job already failed on this account last time. It is not
        counted again, and as a probe it does not keep the breaker open: its probe slot is
        freed for another job at once.
        """
        with self._lock:
            self._healthy_until.pop(account_id, None)
        now = utcnow()
        with self.db.transaction() as session:
            self._ensure_state(session, account_id)
            state = session.execute(
                select(AccountState).where(AccountState.account_id == account_id).with_for_update()
            ).scalar_one()
            if repeat:
                state.probe_until = None
                return False
            state.failures += 1
            if state.failures >= BREAKER_THRESHOLD or state.probe_until is not None:
                # Failures of enough jobs, or a failed probe: (re)open until the next probe.
                state.open_until, state.probe_until = now + BREAKER_COOLDOWN, None
                failures = state.failures
            else:
                return False
        log.warning(
            "circuit breaker opened for upstream account %s after %d failure(s)",
            account_id,
            failures,
            extra={"account": account_id, "breaker": "open", "failures": failures},
        )
        return True

    def _ensure_state(self, session: Session, account_id: str) -> None:
        values = {"account_id": account_id, "failures": 0, "updated_at": utcnow()}
        session.execute(upsert(AccountState).values(**values).on_conflict_do_nothing())

    # ------------------------------------------------------------------ waking

    def wake_waiting(self, now: dt.datetime | None = None) -> int:
        """Bring forward jobs parked for a slot, as many as each account has free."""
        now = now or utcnow()
        woken = 0
        with self.db.transaction() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.status == JobStatus.QUEUED, Job.waiting_since.is_not(None))
            )
            if not waiting:
                return 0
            for account in session.scalars(select(UpstreamAccount).where(UpstreamAccount.enabled)):
                state = session.get(AccountState, account.id)
                if state and state.open_until and state.open_until > now:
                    continue
                routed = (
                    select(Job.id)
                    .join(
                        Route,
                        and_(Route.model_id == Job.model_id, Route.category_id == Job.category_id),
                    )
                    .where(
                        Route.account_id == account.id,
                        Job.status == JobStatus.QUEUED,
                        Job.waiting_since.is_not(None),
                    )
                )
                already_due = session.scalar(
                    select(func.count()).select_from(
                        routed.where(Job.next_action_at <= now + dt.timedelta(seconds=1)).subquery()
                    )
                )
                free = (
                    account.max_in_flight
                    - self.in_flight(session, account.id)
                    - int(already_due or 0)
                )
                if free <= 0:
                    continue
                ids = list(
                    session.scalars(
                        routed.where(Job.next_action_at > now).order_by(Job.id).limit(free)
                    )
                )
                if ids:
                    session.execute(
                        update(Job)
                        .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED)
                        .values(next_action_at=now)
                        .execution_options(synchronize_session=False)
                    )
                    woken += len(ids)
        return woken

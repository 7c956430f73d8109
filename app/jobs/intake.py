"""Accepting a job: the catalog lookup and input rules of CONTRACT §1a, then one INSERT.

Nothing is sent to Celery here. The row is the outbox: it is created due now, and the
scheduler leases it and hands it to a worker, so a request never waits on the broker and a
broker outage loses nothing. The views ring the doorbell (``app.doorbell``) after the commit,
which wakes the scheduler at once; the NOTIFY is never part of the submit's transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CTE, Engine, Insert, Row, Select, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from app.cache import TTLCache, far_below_cap
from app.db import HotStatement, utcnow
from app.jobs import journal
from app.jobs.errors import (
    BadDeadline,
    InsufficientQuota,
    LimitExceeded,
    MissingInput,
    ModelNotFound,
    TooManyActive,
    UnsupportedInput,
)
from app.jobs.models import Job, new_job_id
from app.jobs.offers import Offer, find_model
from app.jobs.progress import POSITION, ahead_of
from app.jobs.queries import count_active
from app.jobs.status import JobStatus
from app.money import ledger
from app.tenancy.keys import KeyHolder
from app.tenancy.models import Org

# The request fields each catalog option stands for (``limits.options``).
FLAG_OPTIONS = ("is_instrumental", "lyrics_optimizer")


def check_limits(model: Offer, args: dict[str, Any]) -> None:
    """The model's own bounds on the request's fields (its catalog ``limits``)."""
    limits = model.limits
    check_options(model, args)
    # An instrumental has no words, and the lyrics optimizer writes them: none are needed.
    lyrics_made = any(args.get(flag) for flag in FLAG_OPTIONS)
    for name in ("prompt", "lyrics"):
        bounds = limits.get(name)
        if not bounds:
            continue
        length = len(args.get(name) or "")
        low, high = bounds.get("min", 0), bounds["max"]
        if length == 0 and (bounds.get("optional") or (name == "lyrics" and lyrics_made)):
            continue
        if length == 0 and low > 0:
            # Reachable where the field is optional for some models (/v2's lyrics).
            raise MissingInput(
                f"Missing required parameter: {name} (model {model.model_name} needs it).",
                param=name,
            )
        if not low <= length <= high:
            raise LimitExceeded(
                f"'{name}' must be {low} to {high} characters for model "
                f"{model.model_name} (got {length}).",
                param=name,
            )
    reference = limits.get("reference_audio", "none")
    if reference == "required" and not args.get("reference_audio_url"):
        raise MissingInput(
            f"Missing required parameter: reference_audio_url (model {model.model_name} "
            "needs a reference track).",
            param="reference_audio_url",
        )
    if reference == "none" and args.get("reference_audio_url"):
        raise UnsupportedInput(
            f"Model {model.model_name} does not take reference audio (reference_audio_url).",
            param="reference_audio_url",
        )


def check_options(model: Offer, args: dict[str, Any]) -> None:
    """Refuse an optional parameter the model does not take (``limits.options``). A flag set
    to false asks for the default, which every model gives."""
    allowed = model.limits.get("options") or ()
    channel = (args.get("audio_setting") or {}).get("channel")
    given = {
        "is_instrumental": args.get("is_instrumental") is True,
        "lyrics_optimizer": args.get("lyrics_optimizer") is True,
        "seed": args.get("seed") is not None,
        "channel": channel is not None,
    }
    for option, present in given.items():
        if present and option not in allowed:
            param = "audio_setting.channel" if option == "channel" else option
            raise UnsupportedInput(
                f"Model {model.model_name} does not take '{param}'"
                + (f" (it takes: {', '.join(allowed)})." if allowed else "."),
                param=param,
            )


def reference_bounds(model: Offer) -> ReferenceBounds:
    """The model's bounds on a reference track, where the catalog sets its own."""
    limits = model.limits
    seconds = limits.get("reference_seconds") or {}
    return ReferenceBounds(
        min_seconds=seconds.get("min"),
        max_seconds=seconds.get("max"),
        max_bytes=limits.get("reference_bytes"),
    )


@dataclass(frozen=True)
class ReferenceBounds:
    """None: the default bound (a WAV or MP3 over 15 s, at most 10 min, and
    REFERENCE_AUDIO_MAX_BYTES)."""

    min_seconds: float | None = None
    max_seconds: float | None = None
    max_bytes: int | None = None


# Below this distance from the cap, counting needs no lock: more concurrent submits of one
# org than this would have to be in progress at once to overshoot.
CAP_LOCK_MARGIN = 64


def charge(
    session: Session,
    key: KeyHolder,
    model: Offer,
    job_id: str,
    *,
    max_active_jobs: int | None,
    recent_active: TTLCache[int] | None = None,
) -> int:
    """CONTRACT §1a rule 4 and the per-org cap: hold the job's price, or refuse
    (``TooManyActive``, ``InsufficientQuota``).

    Called after the job's INSERT, as the last work of the submit's transaction: the row
    locks it takes (the org's balance, and near the cap the org itself) are then held only
    until the commit that follows, so one org's concurrent submits wait on each other as
    briefly as possible. The job counts itself.
    """
    if max_active_jobs is not None:
        check_active_cap(session, key.org_id, max_active_jobs, recent_active)
    price = model.price_for(key.org_id)
    if model.owner_org_id != key.org_id and not ledger.hold(
        session,
        org_id=key.org_id,
        currency=model.currency,
        price=price,
        min_balance=model.min_balance,
        job_id=job_id,
    ):
        raise InsufficientQuota()
    return price


def check_active_cap(
    session: Session, org_id: int, cap: int, recent_active: TTLCache[int] | None
) -> None:
    """Refuse a submit that takes the org over ``cap`` queued + running jobs (``TooManyActive``).

    ``recent_active`` holds each org's count as this process last saw it (for about a
    second). Far below the cap (``far_below_cap``) the submit is not counted at all. Nearer
    the cap every submit counts, and within ``CAP_LOCK_MARGIN`` of it, under the org's row
    lock, exactly.
    """
    if recent_active is not None and _far_below(
        org_id, cap, recent_active, lambda: count_active(session, org_id)
    ):
        return
    active = count_active(session, org_id)
    if active > cap - CAP_LOCK_MARGIN:
        # Near the cap: serialise this org's submits on its row and count again exactly.
        session.execute(
            update(Org)
            .where(Org.id == org_id)
            .values(name=Org.name)
            .execution_options(synchronize_session=False)
        )
        active = count_active(session, org_id)
    if active > cap:
        raise TooManyActive(cap)


def _far_below(
    org_id: int, cap: int, recent_active: TTLCache[int], count: Callable[[], int]
) -> bool:
    return far_below_cap(cap, lambda: recent_active.get(org_id, count))


def _count_on(engine: Engine, org_id: int) -> int:
    with engine.connect() as conn:
        return count_active(conn, org_id)


_JOBS = cast(Table, Job.__table__)
# What a submit writes (create_job fills every one of them).
JOB_FIELDS = (
    "id",
    "price",
    "currency",
    "org_id",
    "api_key_id",
    "model_id",
    "model_name",
    "category_id",
    "catelogid",
    "surface",
    "request",
    "callback_url",
    "client_metadata",
    "status",
    "created_at",
    "updated_at",
    "deadline_at",
    "cancel_after_at",
    "next_action_at",
    "submit_attempts",
    "upstream_attempts",
    "poll_count",
    "invalid_responses",
)
# RETURNING the row: the answer is built from what was stored, with no ORM object to make;
# and its place in the queue, counted in the same statement.
_RETURNED = (*_JOBS.c, ahead_of().label(POSITION))
JOB_INSERT = insert(_JOBS).returning(*_RETURNED)


def _job_from(taken: CTE) -> Insert:
    """The job's INSERT as a SELECT from the hold's ``taken``: no row where no money was taken.
    Its parameters are the job's values under ``job_``-prefixed names."""
    row = select(*(bindparam(f"job_{name}", type_=_JOBS.c[name].type) for name in JOB_FIELDS))
    return insert(_JOBS).from_select(list(JOB_FIELDS), row.select_from(taken)).returning(*_RETURNED)


def _job_with_event(taken: CTE) -> Select[Any]:
    return journal.with_queued_event(_job_from(taken))


# The submit's one-statement forms (``_store_at_once``), each writing the job's ``queued``
# event too: the job alone, or on Postgres a priced job with its hold and the hold's ledger
# entry. Parameters are the job's values under ``job_``-prefixed names.
_JOB_INSERT = HotStatement(
    journal.with_queued_event(
        insert(_JOBS)
        .values({name: bindparam(f"job_{name}", type_=_JOBS.c[name].type) for name in JOB_FIELDS})
        .returning(*_JOBS.c)
    )
)
_HELD_JOB_INSERT = HotStatement(ledger.with_hold(_job_with_event, with_minimum=False))
_HELD_JOB_INSERT_WITH_MINIMUM = HotStatement(ledger.with_hold(_job_with_event, with_minimum=True))


def _store_at_once(
    quick: Engine,
    key: KeyHolder,
    model: Offer,
    values: dict[str, Any],
    *,
    max_active_jobs: int | None,
    recent_active: TTLCache[int] | None,
) -> Row[Any] | None:
    """The submit's commonest case in one autocommit statement, committed when it returns:
    None where it does not apply (the caller takes the transactional path).

    It applies to an org far below its cap (``far_below_cap``: no count and no
    lock are needed) whose price is either nothing or a hold. One statement run in
    autocommit is its own transaction, so the job and its money still commit together; and
    it saves the BEGIN and the COMMIT round trips of a session's transaction.
    """
    price = values["price"]  # nothing on the org's own models
    if not price and model.min_balance and model.owner_org_id != key.org_id:
        return None  # only a minimum to check: rare, left to ``charge``
    if max_active_jobs is not None and not (
        recent_active is not None
        and _far_below(
            key.org_id, max_active_jobs, recent_active, lambda: _count_on(quick, key.org_id)
        )
    ):
        return None
    params = {f"job_{name}": values[name] for name in JOB_FIELDS}
    if not price:
        return _JOB_INSERT.first(quick, params)
    statement = _HELD_JOB_INSERT_WITH_MINIMUM if model.min_balance else _HELD_JOB_INSERT
    params.update(
        ledger.hold_params(
            org_id=key.org_id,
            currency=model.currency,
            price=price,
            min_balance=model.min_balance,
            job_id=values["id"],
            now=values["created_at"],
        )
    )
    job = statement.first(quick, params)
    if job is None:
        raise InsufficientQuota()
    return job


# The shortest client deadline taken: a shorter one could end a job before a worker saw it.
MIN_CANCEL_AFTER = 5


@dataclass(frozen=True)
class ClientDeadline:
    """The client's deadline, in seconds from the submit, and the field it came in
    (``Cancel-After`` or ``cancel_after``), named by a refusal."""

    seconds: float
    param: str


def check_deadline(asked: ClientDeadline, own_seconds: float) -> None:
    """Refuse (``BadDeadline``) a client deadline under ``MIN_CANCEL_AFTER`` or past the job's
    own deadline (``own_seconds``), after which it would never apply."""
    if not MIN_CANCEL_AFTER <= asked.seconds <= own_seconds:
        raise BadDeadline(
            f"Invalid {asked.param}: {asked.seconds:g} seconds is outside {MIN_CANCEL_AFTER} "
            f"to {own_seconds:g} seconds (the job's own deadline).",
            param=asked.param,
        )


@dataclass(frozen=True)
class Draft:
    """A submit that passed every check: the job's values, ready to be stored."""

    model: Offer
    values: dict[str, Any]


def check_funds(session: Session, key: KeyHolder, model: Offer) -> None:
    """Refuse (``InsufficientQuota``), reading only, an org whose balance cannot pay the model.

    The hold that follows decides for good (a concurrent submit may spend the money first);
    this only keeps work a refusal would waste, a reference fetch above all, from being done
    for an org that has no money.
    """
    if model.owner_org_id == key.org_id:
        return
    price, minimum = model.price_for(key.org_id), model.min_balance
    if not price and not minimum:
        return
    available = ledger.balance(session, key.org_id, model.currency).available
    if available < price or (minimum and available <= minimum):
        raise InsufficientQuota()


def prepare(
    session: Session | Callable[[], Session],
    key: KeyHolder,
    args: dict[str, Any],
    *,
    deadline_seconds: float,
    surface: str = "v1",
    check_reference: Callable[[str, ReferenceBounds], None] | None = None,
    check_callback: Callable[[str], None] | None = None,
    offers: TTLCache[Offer | None] | None = None,
    cancel_after: ClientDeadline | None = None,
) -> Draft:
    """Check the request against the catalog, the org's balance and its reference audio;
    writes nothing, so a refusal (or a crash) here leaves no trace.

    ``offers`` caches catalog answers in the calling process for a few seconds.
    ``cancel_after`` is the client's own deadline, if it set one.
    """
    db = _session_of(session)
    key_ = (args["model"], args["catelogid"])
    if offers is not None:
        model = offers.get(key_, lambda: find_model(db(), *key_))
    else:
        model = find_model(db(), *key_)
    if model is None:
        raise ModelNotFound(args["model"], args["catelogid"])
    check_limits(model, args)
    own_deadline = model.deadline_seconds or deadline_seconds
    if cancel_after is not None:
        check_deadline(cancel_after, own_deadline)
    if args.get("callback_url") and check_callback is not None:
        # Refused now, not at the first delivery: a bad target is the client's to fix.
        check_callback(args["callback_url"])
    if args.get("reference_audio_url") and check_reference is not None:
        # The balance first: an org that cannot pay never makes Chorus fetch a URL.
        check_funds(db(), key, model)
        # Fetched and read now, so a bad track is a 400 before anything is charged or sent.
        check_reference(args["reference_audio_url"], reference_bounds(model))
    job_id = new_job_id()
    now = utcnow()
    request = {
        k: args[k]
        for k in (
            "prompt",
            "lyrics",
            "output_format",
            "audio_setting",
            "reference_audio_url",
            "webhook_events",
            "seed",
        )
        if args.get(k) is not None
    }
    if not (request.get("lyrics") or "").strip():
        # Blank lyrics (an instrumental's, a cover's) are no lyrics: nothing to send upstream.
        request.pop("lyrics", None)
    # Flags are kept only when set: false is every model's default.
    request.update({flag: True for flag in FLAG_OPTIONS if args.get(flag) is True})
    values: dict[str, Any] = dict(
        id=job_id,
        price=model.price_for(key.org_id),
        currency=model.currency,
        org_id=key.org_id,
        api_key_id=key.id,
        model_id=model.model_id,
        model_name=model.model_name,
        category_id=model.category_id,
        catelogid=args["catelogid"],
        surface=surface,
        request=request,
        callback_url=args.get("callback_url"),
        client_metadata=args.get("metadata"),
        status=JobStatus.QUEUED,
        created_at=now,
        updated_at=now,
        deadline_at=now + dt.timedelta(seconds=own_deadline),
        cancel_after_at=now + dt.timedelta(seconds=cancel_after.seconds) if cancel_after else None,
        next_action_at=now,
        # Set here rather than left to column defaults: the Core INSERT below skips the ORM.
        submit_attempts=0,
        upstream_attempts=0,
        poll_count=0,
        invalid_responses=0,
    )
    return Draft(model, values)


def store(
    session: Session | Callable[[], Session],
    key: KeyHolder,
    draft: Draft,
    *,
    max_active_jobs: int | None = None,
    recent_active: TTLCache[int] | None = None,
    quick: Engine | None = None,
) -> Row[Any]:
    """Insert the prepared job, QUEUED and due now, with its ``queued`` event, and hold its
    price.

    ``quick``, an engine whose connections autocommit, lets the commonest submit be stored in
    one statement on it, committed at once (``_store_at_once``); otherwise the job is
    inserted and its price held in ``session`` (or in the one that callable gives, the same
    each call, as ``Chorus.session`` does), for the caller to commit.
    """
    db = _session_of(session)
    model, values = draft.model, draft.values
    if quick is not None:
        stored = _store_at_once(
            quick,
            key,
            model,
            values,
            max_active_jobs=max_active_jobs,
            recent_active=recent_active,
        )
        if stored is not None:
            return stored
    # A plain INSERT: the unit of work's bookkeeping costs more than the statement itself on
    # the API's hottest path. The values go as parameters of one prebuilt statement, so
    # nothing is built or compiled per request.
    job = db().execute(JOB_INSERT, values).one()
    db().execute(journal.queued_row(job.id, job.org_id, job.created_at))
    # Last: the locks this takes are held only until the caller's commit.
    charge(
        db(), key, model, values["id"], max_active_jobs=max_active_jobs, recent_active=recent_active
    )
    return job


def create_job(
    session: Session,
    key: KeyHolder,
    args: dict[str, Any],
    *,
    deadline_seconds: float,
    max_active_jobs: int | None = None,
) -> Row[Any]:
    """``prepare`` then ``store`` in ``session``, with no reference or callback check: a
    submit for a caller with nothing to do between (the API's own goes through both)."""
    draft = prepare(session, key, args, deadline_seconds=deadline_seconds)
    return store(session, key, draft, max_active_jobs=max_active_jobs)


def _session_of(session: Session | Callable[[], Session]) -> Callable[[], Session]:
    return session if callable(session) else lambda: session

"""The console's pages. Each reads through ``app.ops``, as the ``chorus`` commands do, so
both show the same facts; the account switches are the only writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, g, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from app.console.auth import TOKEN_FIELD, form_token, no_framing, operators_only
from app.extensions import chorus
from app.jobs.status import JobStatus
from app.ops import accounts as ops_accounts
from app.ops.jobs import JobFilter, list_jobs, story
from app.ops.reports import failures_by_code, throughput
from app.ops.status import snapshot
from app.ops.tenants import tenants

blp = Blueprint(
    "console",
    __name__,
    url_prefix="/ops",
    template_folder="templates",
    static_folder="static",
)
blp.before_request(operators_only)
blp.after_request(no_framing)

JOBS_SHOWN = 100
# The jobs list's filters, named as the links of the other pages give them.
JOB_FILTERS = ("status", "org", "model", "account", "error")
SWITCHES = {
    "disable": "disabled",
    "enable": "enabled",
    "reset-breaker": "breaker closed",
}


@blp.app_template_filter("when")
def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@blp.app_template_filter("minor")
def _minor(amount: int | None) -> str:
    return "" if amount is None else f"{amount:,}"


@blp.context_processor
def _page_globals() -> dict[str, Any]:
    return {"operator": g.get("operator"), "token_field": TOKEN_FIELD, "form_token": form_token}


@blp.get("/")
def overview() -> str:
    from workers.scheduler import LOCK_KEY

    session = chorus().session()
    minutes = throughput(session)
    return render_template(
        "console/overview.html",
        status=snapshot(session, LOCK_KEY),
        minutes=minutes,
        busiest=max([m.ended for m in minutes] + [1]),
    )


@blp.get("/accounts")
def accounts() -> str:
    done = SWITCHES.get(request.args.get("did", ""))
    return render_template(
        "console/accounts.html",
        accounts=ops_accounts.list_accounts(chorus().session()),
        notice=f"{request.args.get('account', '')}: {done}" if done else None,
    )


@blp.post("/accounts/<account_id>/<action>")
def switch(account_id: str, action: str) -> Response:
    if action not in SWITCHES:
        raise NotFound()
    session = chorus().session()
    try:
        if action == "reset-breaker":
            ops_accounts.reset_breaker(session, account_id)
        else:
            ops_accounts.set_enabled(session, account_id, action == "enable")
    except ops_accounts.UnknownAccount:
        raise NotFound() from None
    chorus().commit()
    # 303: the browser shows the list with a GET, and a reload does not post again.
    return redirect(url_for(".accounts", did=action, account=account_id), 303)


@blp.get("/failures")
def failures() -> str:
    return render_template("console/failures.html", failures=failures_by_code(chorus().session()))


@blp.get("/tenants")
def tenant_list() -> str:
    return render_template("console/tenants.html", tenants=tenants(chorus().session()))


@blp.get("/jobs")
def jobs() -> str:
    chosen = {name: request.args.get(name, "").strip() for name in JOB_FILTERS}
    given = {name: value or None for name, value in chosen.items()}
    where = JobFilter(
        status=given["status"],
        org=given["org"],
        model=given["model"],
        account=given["account"],
        error_code=given["error"],
        limit=JOBS_SHOWN,
    )
    return render_template(
        "console/jobs.html",
        jobs=list_jobs(chorus().session(), where),
        chosen=chosen,
        statuses=list(JobStatus),
        shown=JOBS_SHOWN,
    )


@blp.get("/jobs/<job_id>")
def job(job_id: str) -> tuple[str, int]:
    told = story(chorus().session(), job_id)
    return render_template("console/job.html", job_id=job_id, told=told), 200 if told else 404

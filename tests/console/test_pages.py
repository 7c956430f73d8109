"""The ops console through Flask's test client, on real Postgres: who gets in, what a POST
needs, and that each page shows the workload (``support.py``) as ``app.ops`` reads it."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from app.catalog.models import UpstreamAccount
from app.db import Database
from app.ops.accounts import list_accounts
from config import Settings
from tests.conftest import auth
from tests.console.support import FAILED_CODE, LOGIN, OTHER_LOGIN, Workload, with_console

# The workload's webhook goes to a receiver on 127.0.0.1.
pytestmark = pytest.mark.env(ALLOW_PRIVATE_URLS="true")

PAGES = ["/ops/", "/ops/accounts", "/ops/failures", "/ops/tenants", "/ops/jobs"]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


OPERATOR = basic(*LOGIN)


@pytest.fixture
def ops(console_app: Any) -> Any:
    return console_app.test_client()


def page(ops: Any, path: str, headers: dict[str, str] = OPERATOR) -> str:
    answer = ops.get(path, headers=headers)
    assert answer.status_code == 200, (path, answer.status_code, answer.data[:300])
    assert answer.mimetype == "text/html"
    text: str = answer.get_data(as_text=True)
    return text


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no form token on the page"
    return found.group(1)


def breaker(db: Database, account: str) -> str:
    with db.session() as session:
        [view] = [v for v in list_accounts(session) if v.id == account]
        return view.breaker


# ------------------------------------------------------------------ who gets in


def test_without_ops_basic_auth_there_is_no_console(settings: Settings, db: Database) -> None:
    from app.web import create_app

    for logins in (None, "", ","):
        app = create_app(with_console(settings, logins))
        client = app.test_client()
        for path in [*PAGES, "/ops/static/console.css", "/ops/jobs/luid_x"]:
            answer = client.get(path, headers=OPERATOR)
            # The same 404 as any path Chorus does not have: nothing says a console exists.
            assert answer.status_code == 404, (logins, path)
            assert answer.get_json() == client.get("/no-such-page").get_json()
        assert client.post("/ops/accounts/x/disable", headers=OPERATOR).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-login"),
        pytest.param(basic(LOGIN[0], "wrong"), id="wrong-password"),
        pytest.param(basic("nobody", LOGIN[1]), id="unknown-user"),
        pytest.param(basic(LOGIN[0], LOGIN[1] + "x"), id="password-with-more"),
        pytest.param(basic(LOGIN[0], LOGIN[1][:-1]), id="password-prefix"),
        pytest.param({"Authorization": "Basic !!!not-base64"}, id="garbage"),
        pytest.param({"Authorization": "Bearer " + LOGIN[1]}, id="bearer-password"),
    ],
)
def test_a_missing_or_wrong_login_is_challenged(ops: Any, headers: dict[str, str]) -> None:
    for path in [*PAGES, "/ops/static/console.css"]:
        answer = ops.get(path, headers=headers)
        assert answer.status_code == 401, path
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="chorus-ops"')
        assert "Chorus ops" not in answer.get_data(as_text=True)


@pytest.mark.env(RATE_LIMIT="7 per minute")
def test_guessing_passwords_spends_the_addresss_budget_of_failures(ops: Any) -> None:
    guesser = {"REMOTE_ADDR": "10.9.0.1"}
    guesses = [
        ops.get("/ops/", headers=basic(LOGIN[0], f"guess{n}"), environ_base=guesser).status_code
        for n in range(7)
    ]
    assert guesses == [401] * 7
    # Spent: the right password from that address waits too, until the window ends.
    refused = ops.get("/ops/", headers=OPERATOR, environ_base=guesser)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    # The failures' budget refused it (the address's own budget of requests is spent too).
    assert "invalid API key" in refused.get_json()["error"]["message"]
    # A browser's first request, before it has asked for a login, is no guess.
    elsewhere = {"REMOTE_ADDR": "10.9.0.2"}
    for _ in range(6):
        assert ops.get("/ops/", environ_base=elsewhere).status_code == 401
    assert ops.get("/ops/", headers=OPERATOR, environ_base=elsewhere).status_code == 200


def test_a_tenants_api_key_opens_nothing(ops: Any, api_key: str) -> None:
    assert ops.get("/v1/balance", headers=auth(api_key)).status_code == 200  # a working key
    for headers in (auth(api_key), basic("acme", api_key), basic(api_key, "")):
        for path in PAGES:
            assert ops.get(path, headers=headers).status_code == 401, (headers, path)


def test_each_operator_login_gets_in_and_is_named(ops: Any) -> None:
    for user, password in (LOGIN, OTHER_LOGIN):
        html = page(ops, "/ops/", basic(user, password))
        assert f'<span class="who">{user}</span>' in html
    css = ops.get("/ops/static/console.css", headers=OPERATOR)
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_pages_are_neither_cached_nor_framed(ops: Any) -> None:
    answer = ops.get("/ops/", headers=OPERATOR)
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert "script-src 'none'" in answer.headers["Content-Security-Policy"]


# ------------------------------------------------------------------ the switches


def test_a_post_needs_the_token_of_the_consoles_own_form(
    ops: Any, db: Database, settings: Settings, workload: Workload
) -> None:
    account = workload.broken_account
    reset = f"/ops/accounts/{account}/reset-breaker"
    other_operator = form_token(page(ops, "/ops/accounts", basic(*OTHER_LOGIN)))
    other_key = URLSafeTimedSerializer("another-secret", salt="chorus.ops.csrf").dumps(LOGIN[0])
    for form in (
        {},
        {"csrf_token": ""},
        {"csrf_token": "garbage"},
        {"csrf_token": other_operator},  # another operator's token
        {"csrf_token": other_key},  # signed with another SECRET_KEY
    ):
        answer = ops.post(reset, data=form, headers=OPERATOR)
        assert answer.status_code == 403, form
        assert breaker(db, account) == "open"

    token = form_token(page(ops, "/ops/accounts"))
    # Without the login, the token alone is nothing.
    assert ops.post(reset, data={"csrf_token": token}).status_code == 401
    assert breaker(db, account) == "open"
    done = ops.post(reset, data={"csrf_token": token}, headers=OPERATOR)
    assert done.status_code == 303
    assert done.headers["Location"].startswith("/ops/accounts?")
    assert breaker(db, account) == "closed"
    assert f"{account}: breaker closed" in page(ops, done.headers["Location"])


def test_an_expired_token_is_refused(
    ops: Any, db: Database, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itsdangerous.timed

    from app.console.auth import TOKEN_MAX_AGE

    html = page(ops, "/ops/accounts")
    fresh = form_token(html)
    later = itsdangerous.timed.time.time() + TOKEN_MAX_AGE + 60
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: later)
    answer = ops.post(
        f"/ops/accounts/{workload.broken_account}/reset-breaker",
        data={"csrf_token": fresh},
        headers=OPERATOR,
    )
    assert answer.status_code == 403
    assert breaker(db, workload.broken_account) == "open"


def test_disable_and_enable_an_account_from_its_page(
    ops: Any, db: Database, catalog: dict[str, Any]
) -> None:
    account = catalog["accounts"][0]["id"]

    def enabled() -> bool:
        with db.session() as session:
            return session.get_one(UpstreamAccount, account).enabled

    token = form_token(page(ops, "/ops/accounts"))
    answer = ops.post(
        f"/ops/accounts/{account}/disable", data={"csrf_token": token}, headers=OPERATOR
    )
    assert answer.status_code == 303 and not enabled()
    html = page(ops, answer.headers["Location"])
    assert f"{account}: disabled" in html
    assert f'action="/ops/accounts/{account}/enable"' in html
    ops.post(f"/ops/accounts/{account}/enable", data={"csrf_token": token}, headers=OPERATOR)
    assert enabled()

    unknown = ops.post(
        "/ops/accounts/no-such/disable", data={"csrf_token": token}, headers=OPERATOR
    )
    assert unknown.status_code == 404
    bad_action = ops.post(
        f"/ops/accounts/{account}/delete", data={"csrf_token": token}, headers=OPERATOR
    )
    assert bad_action.status_code == 404 and enabled()
    assert ops.get(f"/ops/accounts/{account}/disable", headers=OPERATOR).status_code == 405
    assert enabled()


# ------------------------------------------------------------------ what the pages show


def test_the_overview_shows_the_status_snapshot_and_throughput(
    ops: Any, workload: Workload
) -> None:
    html = page(ops, "/ops/")
    assert "NONE LEADING" in html  # no scheduler runs here
    # The queued job is due and nobody leases it.
    assert re.search(r'id="backlog">\s*<h2>Due backlog</h2>\s*<p class="big">1 jobs</p>', html)
    assert re.search(r'id="webhooks">.*?<p class="big">0 pending</p>', html, re.S)
    assert re.search(r'id="breakers">.*?<p class="big">1 not closed</p>', html, re.S)
    last_hour = re.findall(r"status=(\w+)\">\1</a></td><td class=\"num\">(\d+)</td>", html)
    assert dict(last_hour) == {"CANCELLED": "1", "FAILED": "1", "QUEUED": "1", "SUCCEEDED": "1"}
    assert "3 jobs ended in the last hour." in html
    assert len(re.findall(r'<rect [^>]*class="bar"', html)) == 60


def test_the_accounts_page_shows_in_flight_limits_and_breakers(
    ops: Any, db: Database, workload: Workload
) -> None:
    html = page(ops, "/ops/accounts")
    with db.session() as session:
        views = list_accounts(session)
    assert views
    for view in views:
        row = re.search(rf'<tr id="account-{re.escape(view.id)}">(.*?)</tr>', html, re.S)
        assert row, view.id
        cells = row.group(1)
        assert f"{view.in_flight} / {view.max_in_flight}" in cells
        assert (
            f'class="breaker {"ok" if view.breaker == "closed" else "bad"}">{view.breaker}<'
            in cells
        )
    assert breaker(db, workload.broken_account) == "open"


def test_failures_by_code_link_to_the_jobs_list(ops: Any, workload: Workload) -> None:
    html = page(ops, "/ops/failures")
    link = f"/ops/jobs?status=FAILED&amp;error={FAILED_CODE}"
    assert f'<a href="{link}">{FAILED_CODE}</a></td>\n      <td class="num">1</td>' in html
    listed = page(ops, link.replace("&amp;", "&"))
    assert workload.failed in listed
    assert workload.succeeded not in listed and workload.queued not in listed


def test_the_tenants_page_shows_balances_and_usage(ops: Any, workload: Workload) -> None:
    html = page(ops, "/ops/tenants")
    row = re.search(r'<tr id="tenant-acme" class="first">(.*?)</tr>', html, re.S)
    assert row
    cells = [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    ]
    # 1,000,000 credited; 100 captured by the success; 100 held by the queued job.
    assert cells[0] == "acme"
    assert cells[2:] == ["999,800 CNY", "100 CNY", "4", "1", "100 CNY"]
    globex = re.search(r'<tr id="tenant-globex" class="first">(.*?)</tr>', html, re.S)
    assert globex and "5,000 CNY" in globex.group(1)


def test_the_jobs_list_filters(ops: Any, workload: Workload, catalog: dict[str, Any]) -> None:
    every = [workload.queued, workload.cancelled, workload.failed, workload.succeeded]

    def listed(query: str) -> list[str]:
        return re.findall(
            r'class="job" href="/ops/jobs/(luid_\w+)"', page(ops, f"/ops/jobs{query}")
        )

    assert listed("") == every  # newest first
    assert listed("?status=succeeded") == [workload.succeeded]
    assert listed("?status=QUEUED&org=acme") == [workload.queued]
    assert listed("?org=globex") == []
    assert listed(f"?error={FAILED_CODE}") == [workload.failed]
    assert listed("?model=music-2.6&status=CANCELLED") == [workload.cancelled]
    assert listed("?model=no-such-model") == []
    ran = catalog["accounts"][0]["id"]
    assert set(listed(f"?account={ran}")) == {workload.succeeded, workload.failed}
    assert "no job matches" in page(ops, "/ops/jobs?org=globex")


def test_a_jobs_story_tells_upstream_money_and_deliveries(ops: Any, workload: Workload) -> None:
    html = page(ops, f"/ops/jobs/{workload.succeeded}")
    facts = dict(re.findall(r"<tr><th>(\w+)</th><td[^>]*>(.*?)</td></tr>", html))
    assert facts["status"] == "SUCCEEDED" and facts["org"] == "acme"
    assert facts["generation_id"].startswith("gen-") and facts["submit_attempts"] == "1"
    money = re.findall(r"<td>(hold|capture|release)</td>", html)
    assert money == ["hold", "capture"]
    assert "<strong>music.generation.succeeded</strong>" in html and ": delivered</p>" in html
    assert re.search(r'<td class="num">1</td><td>[^<]+</td><td class="num">200</td>', html)

    failed = page(ops, f"/ops/jobs/{workload.failed}")
    assert f"<td>{FAILED_CODE}</td>" in failed.replace("<td >", "<td>")
    assert re.findall(r"<td>(hold|capture|release)</td>", failed) == ["hold", "release"]
    assert "No webhook for this job." in failed

    missing = ops.get("/ops/jobs/luid_nosuchjob", headers=OPERATOR)
    assert missing.status_code == 404 and "No job has this id." in missing.get_data(as_text=True)

"""The ops console in a real headless browser: the OS's Chromium driven by Playwright.

An operator logs in, walks every page, resets an open breaker with its button, follows a
failure code to the jobs it names and a job to its story. Each page is screenshotted; with
``CONSOLE_SCREENSHOTS=docs/console`` the pictures the README shows are taken again, otherwise
they go to the test's temporary folder so that a test run leaves the tree as it was.
``make test`` installs Chromium where it may; without it the test is skipped, except in CI,
where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.console.support import FAILED_CODE, LOGIN, Workload
from tests.serving import serve

pytestmark = pytest.mark.env(ALLOW_PRIVATE_URLS="true")

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches the network or writes a profile on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module's tests (starting one takes a second or two)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install chromium` (make test does, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def base_url(console_app: Any) -> Iterator[str]:
    with serve(console_app) as url:
        yield url


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = ROOT / chosen if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Any, name: str, folder: Path) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_an_operator_walks_the_console(
    browser: Any, base_url: str, workload: Workload, screenshots: Path
) -> None:
    stranger = browser.new_context()
    try:
        # A browser with no login: Chromium, unable to ask anyone in headless mode, gives up
        # on the challenge; its request API shows the answer itself.
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            stranger.new_page().goto(f"{base_url}/ops/")
        assert stranger.request.get(f"{base_url}/ops/").status == 401
    finally:
        stranger.close()

    context = browser.new_context(
        http_credentials={"username": LOGIN[0], "password": LOGIN[1]}, viewport=VIEWPORT
    )
    try:
        page = context.new_page()
        assert page.goto(f"{base_url}/ops/").status == 200
        assert page.locator("#scheduler .big").inner_text() == "NONE LEADING"
        assert page.locator("#breakers .big").inner_text() == "1 not closed"
        assert page.locator("#throughput figcaption").inner_text() == (
            "3 jobs ended in the last hour."
        )
        # The stylesheet loaded (behind the same login): the header is dark, not default white.
        header = page.locator("header").evaluate("e => getComputedStyle(e).backgroundColor")
        assert header == "rgb(22, 32, 43)"
        shoot(page, "overview", screenshots)

        page.get_by_role("link", name="Accounts", exact=True).click()
        row = page.locator(f'[id="account-{workload.broken_account}"]')
        assert row.locator(".breaker").inner_text() == "open"
        shoot(page, "accounts", screenshots)
        row.get_by_role("button", name="Reset breaker").click()
        page.wait_for_url("**/ops/accounts?**")
        assert page.locator(".notice").inner_text() == f"{workload.broken_account}: breaker closed"
        assert row.locator(".breaker").inner_text() == "closed"

        page.get_by_role("link", name="Failures", exact=True).click()
        shoot(page, "failures", screenshots)
        page.get_by_role("link", name=FAILED_CODE).click()
        page.wait_for_url("**/ops/jobs?**")
        assert page.locator("a.job").all_inner_texts() == [workload.failed]

        page.get_by_role("link", name="Tenants", exact=True).click()
        assert page.locator("#tenant-acme td").first.inner_text() == "acme"
        shoot(page, "tenants", screenshots)

        page.get_by_role("link", name="Jobs", exact=True).click()
        assert page.locator("a.job").count() == 4
        shoot(page, "jobs", screenshots)
        page.get_by_role("link", name=workload.succeeded).click()
        page.wait_for_url(f"**/ops/jobs/{workload.succeeded}")
        assert page.locator("h1").inner_text() == f"Job {workload.succeeded}"
        assert page.locator("#money tbody tr").count() == 2
        delivery = page.locator(".delivery")
        assert "music.generation.succeeded" in delivery.inner_text()
        assert delivery.locator("tbody td").nth(2).inner_text() == "200"
        shoot(page, "job", screenshots)
    finally:
        context.close()

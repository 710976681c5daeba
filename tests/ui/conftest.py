"""Debian's Chromium driving the deployed Modoboa of ``tests/deployment.py``.

Each test gets a fresh browser context, logs in through Modoboa's login form and fails on
any uncaught page error, console error or server error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modoboa_pro.demo.ui import ADMIN_LOGIN

from ..deployment import Stack

pytestmark = pytest.mark.ui

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps calling Google's hosts, refused on this network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "ui"
# Provisioning through Pebble takes seconds; the page polls every 2 s.
PROVISION_TIMEOUT_MS = 60_000


# -- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Session:
    """One logged-in browser tab, recording what went wrong in the page."""

    page: object
    origin: str
    problems: list[str]

    def click_menu(self, label: str) -> None:
        """Open a page from the menu: Modoboa 2.12 cannot deep-link to plugin pages."""
        drawer = self.page.locator(".v-navigation-drawer")  # type: ignore[attr-defined]
        drawer.get_by_role("link", name=label, exact=True).click()

    def open_virtual_hosts(self, label: str = "Virtual hosts") -> None:
        self.click_menu(label)
        self.page.wait_for_url("**/admin/virtualhosts")  # type: ignore[attr-defined]
        self.page.get_by_test_id("vh-table").wait_for()  # type: ignore[attr-defined]

    def row(self, hostname: str):
        return self.page.locator(f'tr[data-hostname="{hostname}"]')  # type: ignore[attr-defined]

    def screenshot(self, name: str) -> Path:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        # Transitions fast-forwarded: a dialog is captured open, not half-faded.
        self.page.screenshot(path=str(path), full_page=True, animations="disabled")  # type: ignore[attr-defined]
        return path


# Console lines that are not errors of the page: Chromium logs every 4xx answer, and the
# tests provoke some on purpose (a refused hostname is a 400, a busy host a 409); 5xx
# answers are reported separately, with their URL.
_EXPECTED = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


@pytest.fixture
def login(browser, stack: Stack) -> Iterator[Callable[..., Session]]:
    """``login(username, password, viewport=)``: a new context, logged in through the form."""
    contexts = []
    sessions: list[Session] = []

    def _login(
        username: str = ADMIN_LOGIN[0],
        password: str = ADMIN_LOGIN[1],
        viewport: dict[str, int] | None = None,
    ) -> Session:
        context = browser.new_context(
            ignore_https_errors=True, viewport=viewport or DESKTOP, locale="en-US"
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        session = Session(page, stack.web.origin, [])
        sessions.append(session)
        page.on("pageerror", lambda err: session.problems.append(f"page error: {err}"))
        page.on(
            "console",
            lambda msg: (
                session.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and not _EXPECTED.search(msg.text)
                else None
            ),
        )
        page.on(
            "response",
            lambda answer: (
                session.problems.append(
                    f"HTTP {answer.status} {answer.request.method} {answer.url}"
                )
                if answer.status >= 500
                else None
            ),
        )
        # index.html asks Google for the Roboto font; there is no Internet here.
        page.route(
            re.compile(r"^https://fonts\.(googleapis|gstatic)\.com/"),
            lambda route: route.fulfill(status=200, content_type="text/css", body=""),
        )
        page.goto(stack.web.origin + "/")
        page.wait_for_url("**/accounts/login/**")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/admin/?$"))
        return session

    yield _login
    for context in contexts:
        context.close()
    problems = [p for s in sessions for p in s.problems]
    assert not problems, "the page reported errors:\n" + "\n".join(problems)

"""A deployed Modoboa with the plugin, its SPA over HTTPS, and Debian's Chromium driving it.

One instance per session (deploying takes about 20 s): ``make demo``'s own stages, then the
web UI stage of ``make demo --ui``. Each test gets a fresh browser context, logs in through
Modoboa's login form and fails on any uncaught page error or console error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modoboa_pro.demo.client import ModoboaApi
from modoboa_pro.demo.console import Console
from modoboa_pro.demo.run import Demo
from modoboa_pro.demo.ui import ADMIN_LOGIN, WebUi
from modoboa_pro.testing import DnsResponder, NginxServer

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
# Every password of the accounts the tests create (the admin's is Modoboa's default).
PASSWORD = "Ui-tests-2026!"
# Provisioning through Pebble takes seconds; the page polls every 2 s.
PROVISION_TIMEOUT_MS = 60_000


@dataclass
class Stack:
    """The running instance and the loopback servers it uses."""

    demo: Demo
    web: WebUi
    api: ModoboaApi
    dns: DnsResponder
    nginx: NginxServer
    domains: dict[str, int] = field(default_factory=dict)

    def shell(self, code: str) -> str:
        """Run Python in the instance (``manage.py shell -c``); return what it printed."""
        return self.demo.instance.manage("shell", "-c", code)

    def host(self, hostname: str) -> dict | None:
        return next((h for h in self.api.virtualhosts() if h["hostname"] == hostname), None)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ui")
    log = open(root / "demo.log", "w")  # noqa: SIM115 (closed at teardown)
    demo = Demo(Console(log, stages=7), root, hostnames=())
    try:
        demo.start_services()
        demo.deploy()
        demo.start_modoboa()
        web = demo.serve_ui()
        stack = Stack(demo, web, demo.api, demo.dns, demo.nginx)
        stack.domains = _create_accounts(stack)
        yield stack
    finally:
        demo.stop_all()
        log.close()


def _create_accounts(stack: Stack) -> dict[str, int]:
    """Two domains; a DomainAdmin of the first; a SuperAdmin who reads French."""
    out = stack.shell(
        f"""
import json
from django.contrib.auth.models import Group
from modoboa.admin.models import Domain
from modoboa.core.models import User
from modoboa.lib.permissions import grant_access_to_object
admin = User.objects.get(username="admin")
ids = {{}}
for name in ("alpha.test", "beta.test"):
    dom = Domain.objects.create(name=name, quota=0, default_mailbox_quota=0)
    grant_access_to_object(admin, dom, is_owner=True)
    ids[name] = dom.pk
def account(username, role=None, language="en"):
    # SuperAdmins are Django superusers; the other roles are groups.
    user = User.objects.create(
        username=username, email=username, language=language, is_superuser=role is None
    )
    user.set_password({PASSWORD!r})
    user.save()
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user
Domain.objects.get(name="alpha.test").add_admin(account("boss@alpha.test", "DomainAdmins"))
account("chef@alpha.test", language="fr")
print(json.dumps(ids))
"""
    )
    return json.loads(out.strip().splitlines()[-1])


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

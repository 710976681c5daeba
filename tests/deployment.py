"""A Modoboa deployed as an operator would, with the plugin, its workers and its web UI.

One instance per session (deploying takes about 20 s), built by ``make demo``'s own stages
and the web UI stage of ``make demo-ui``: the browser tests (``tests/ui``) and the
operations tests (``tests/operations``) use it through the ``stack`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from modoboa_pro.demo.client import ModoboaApi
from modoboa_pro.demo.console import Console
from modoboa_pro.demo.run import Demo
from modoboa_pro.demo.ui import WebUi
from modoboa_pro.testing import DnsResponder, NginxServer, PostgresServer

# Every password of the accounts the tests create (the admin's is Modoboa's default).
PASSWORD = "Ui-tests-2026!"


@dataclass
class Stack:
    """The running instance and the loopback servers it uses."""

    demo: Demo
    web: WebUi | None
    api: ModoboaApi
    dns: DnsResponder
    nginx: NginxServer
    domains: dict[str, int] = field(default_factory=dict)

    def shell(self, code: str) -> str:
        """Run Python in the instance (``manage.py shell -c``); return what it printed."""
        return self.demo.instance.manage("shell", "-c", code)

    def host(self, hostname: str) -> dict | None:
        return next((h for h in self.api.virtualhosts() if h["hostname"] == hostname), None)


def deployed_stack(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    postgres: bool = False,
    modoboa_workers: int = 1,
    web_ui: bool = True,
) -> Iterator[Stack]:
    """Deploy, start everything, yield; stop everything (by PID) at the end.

    ``postgres``: on a PostgreSQL cluster of its own instead of SQLite. ``web_ui``: also
    serve the SPA and create the accounts the browser tests log in with.
    """
    root = tmp_path_factory.mktemp("deployed-pg" if postgres else "deployed")
    log = open(root / "demo.log", "w")  # noqa: SIM115 (closed at teardown)
    database = PostgresServer(root / "postgres") if postgres else None
    try:
        url = database.start().create_database("modoboa") if database else None
        demo = Demo(
            Console(log, stages=7), root, hostnames=(), database_url=url,
            modoboa_workers=modoboa_workers,
        )  # fmt: skip
        try:
            demo.start_services()
            demo.deploy()
            demo.start_modoboa()
            web = demo.serve_ui() if web_ui else None
            stack = Stack(demo, web, demo.api, demo.dns, demo.nginx)
            if web_ui:
                stack.domains = _create_accounts(stack)
            yield stack
        finally:
            demo.stop_all()
    finally:
        if database is not None:
            database.stop()
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



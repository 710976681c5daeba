"""A domain's usual names through the real chain: Pebble, nginx, Redis, Modoboa's endpoints.

One name without DNS fails on its own while the two others go active; the autoconfig and
autodiscover sites, served by nginx over HTTPS with their Pebble certificates, answer what
Modoboa's own endpoints (served by a WSGI server) answer for a mailbox, and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from rest_framework.test import APIClient

from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain

pytestmark = [pytest.mark.chain, pytest.mark.names]

URL = "/api/v2/virtualhosts/"
OUTLOOK_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>alice@example.test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


XML = {"Content-Type": "text/xml"}


@pytest.fixture(scope="module")
def modoboa_web() -> Iterator[str]:
    """Modoboa itself (its URLconf, its modoboa.autoconfig views) under a WSGI server."""
    from django.core.wsgi import get_wsgi_application

    server = make_server(
        "127.0.0.1",
        0,
        get_wsgi_application(),
        server_class=_ThreadingWSGIServer,
        handler_class=_Quiet,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def domain_admin(domain) -> APIClient:
    """An API client of a DomainAdmin of ``domain`` (the role the action is scoped for)."""
    from django.contrib.auth.models import Group
    from modoboa.core.models import User
    from modoboa.lib.permissions import grant_access_to_object
    from rest_framework.authtoken.models import Token

    grant_access_to_object(User.objects.get(username="admin"), domain, is_owner=True)
    account = User.objects.create(username="admin@example.test", email="admin@example.test")
    account.groups.add(Group.objects.get(name="DomainAdmins"))
    domain.add_admin(account)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=account).key}")
    return client


def https(chain: Chain, hostname: str, method: str, path: str, body: bytes | None = None):
    """The mail clients' requests: XML over verified HTTPS (``Chain.https``)."""
    return chain.https(hostname, path, method=method, body=body, headers=XML)


def test_the_usual_names_go_active_on_their_own_and_serve_modoboas_autoconfig(
    chain: Chain, settings, modoboa_web: str
):
    from modoboa.admin.models import Domain

    settings.VIRTUALHOSTS_AUTOCONFIG_UPSTREAM = modoboa_web
    settings.VIRTUALHOSTS_AUTOCONFIG_UPSTREAM_PROTOCOL = "http"
    domain = Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    api = domain_admin(domain)
    # autodiscover.example.test has no DNS record yet.
    chain.dns.nxdomain.add("autodiscover.example.test")

    response = api.post(f"{URL}domain-names/", {"domain": domain.pk}, format="json")
    assert response.status_code == 201, response.content
    chain.drain()

    hosts = {h.hostname: h for h in VirtualHost.objects.filter(domain=domain)}
    mail, autoconfig = hosts["mail.example.test"], hosts["autoconfig.example.test"]
    missing = hosts["autodiscover.example.test"]
    assert mail.status == constants.STATUS_ACTIVE, mail.last_error
    assert mail.serves_mail and mail.site == constants.SITE_WEB
    assert autoconfig.status == constants.STATUS_ACTIVE, autoconfig.last_error
    assert missing.status == constants.STATUS_FAILED
    assert "autodiscover.example.test" in missing.last_error
    assert "DNS" in missing.last_error or "NXDOMAIN" in missing.last_error
    assert chain.failed_jobs() == []

    # Thunderbird, over HTTPS with the name's Pebble certificate, at both of its URLs.
    for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
        answer = https(
            chain, "autoconfig.example.test", "GET", f"{path}?emailaddress=alice%40example.test"
        )
        assert answer.status == 200, (path, answer.data[:300])
        xml = answer.data.decode()
        assert '<emailProvider id="example.test">' in xml
        assert "<hostname>mail.%EMAILDOMAIN%</hostname>" in xml  # Thunderbird substitutes
        assert "<username>alice@example.test</username>" in xml
    # The name serves the mail clients' paths only: not Modoboa's UI, API or the web sites'.
    for path in ("/", "/api/v2/virtualhosts/", "/autodiscover/autodiscover.xml"):
        assert https(chain, "autoconfig.example.test", "GET", path).status == 404, path
    assert https(chain, "mail.example.test", "GET", "/").status == 200  # the web site

    # Its DNS record published, the admin retries: Outlook, in its own letter case.
    chain.dns.nxdomain.discard("autodiscover.example.test")
    assert api.post(f"{URL}{missing.pk}/retry/").status_code == 202
    chain.drain()
    missing.refresh_from_db()
    assert missing.status == constants.STATUS_ACTIVE, missing.last_error
    answer = https(
        chain,
        "autodiscover.example.test",
        "POST",
        "/Autodiscover/Autodiscover.xml",
        OUTLOOK_REQUEST,
    )
    assert answer.status == 200, answer.data[:300]
    xml = answer.data.decode()
    assert "<Server>mail.example.test</Server>" in xml and "<Port>993</Port>" in xml
    assert "<LoginName>alice@example.test</LoginName>" in xml
    assert https(chain, "autodiscover.example.test", "GET", "/mail/config-v1.1.xml").status == 404

"""Over HTTP, through real nginx, the webroot shows challenge tokens and nothing else."""

from __future__ import annotations

import http.client

import pytest

from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.adapters import storage, webroot
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, Chain, set_parameters

pytestmark = pytest.mark.chain

PREFIX = "/.well-known/acme-challenge/"


def raw_get(chain: Chain, hostname: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation of dots or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", chain.nginx.http_port, timeout=5)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", hostname)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("template", ["http_only", "https"])
def test_only_tokens_are_served_from_the_webroot(chain: Chain, template: str):
    hostname = "exposed.example.test"
    host = VirtualHost.objects.create(hostname=hostname)
    if template == "http_only":
        set_parameters(enable_letsencrypt=False)
    chain.drain()
    host.refresh_from_db()
    expected = constants.STATUS_HTTP_ONLY if template == "http_only" else constants.STATUS_ACTIVE
    assert host.status == expected, host.last_error

    root = chain.storage
    web = root / constants.WEBROOT_DIRNAME
    publisher = webroot.WebrootPublisher(web)
    publisher.publish("Valid_token-123", "Valid_token-123.thumbprint")
    challenge_dir = web.joinpath(*webroot.CHALLENGE_SUBPATH)
    # Files that are not tokens: a hidden one (as a temporary write leaves), one with a dot.
    (challenge_dir / ".hidden").write_text("hidden")
    (challenge_dir / "not.a-token").write_text("dotted")

    status, body = raw_get(chain, hostname, PREFIX + "Valid_token-123")
    assert (status, body) == (200, b"Valid_token-123.thumbprint")

    secrets: list[bytes] = []
    for path in root.rglob("*.pem"):
        secrets.append(path.read_bytes())
    secrets += [p.read_bytes() for p in root.rglob("*.json")]
    if host.status == constants.STATUS_ACTIVE:
        fullchain, privkey = storage.certificate_paths(root, hostname)
        assert privkey.exists()

    attempts = [
        PREFIX,  # directory listing
        PREFIX + ".hidden",
        PREFIX + "not.a-token",
        PREFIX + "..",
        PREFIX + "../../certs/" + hostname + "/privkey.pem",
        PREFIX + "..%2f..%2fcerts%2f" + hostname + "%2fprivkey.pem",
        PREFIX + "%2e%2e/%2e%2e/certs/" + hostname + "/privkey.pem",
        PREFIX + "%2e%2e%2f%2e%2e%2fcerts%2f" + hostname + "%2fprivkey.pem",
        PREFIX + "%252e%252e%252fcerts",
        PREFIX + "..\\..\\certs\\" + hostname + "\\privkey.pem",
        PREFIX + "Valid_token-123%00.pem",
        PREFIX + "Valid_token-123/",
        PREFIX + "Valid_token-123/..",
        "/.well-known/../certs/" + hostname + "/privkey.pem",
        "/.well-known/acme-challenge/../../accounts/",
        "/.well-known/",
        "/.well-known/acme-challenge",
        "//.well-known//acme-challenge//..//..//certs//" + hostname + "//privkey.pem",
    ]
    leaks = []
    for target in attempts:
        status, body = raw_get(chain, hostname, target)
        if any(secret and secret.strip() and secret.strip() in body for secret in secrets):
            leaks.append((target, status, "storage content"))
        if b"PRIVATE KEY" in body or b"hidden" in body or b"dotted" in body:
            leaks.append((target, status, body[:80]))
        # Anything outside the token path reaches the application (or is refused), never files.
        if status == 200 and body != BACKEND_BODY and not body.startswith(b"<"):
            leaks.append((target, status, body[:80]))
    assert leaks == []
    for target in (PREFIX, PREFIX + ".hidden", PREFIX + "not.a-token", PREFIX + "Valid_token-123/"):
        assert raw_get(chain, hostname, target)[0] == 404, target

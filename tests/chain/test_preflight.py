"""Pre-flight before any order: DNS (through the stub Pebble asks too) and a canary over HTTP.

Each fault is made real on loopback: a name the stub says does not exist, or has no
address, a resolver that does not answer, an address where nothing listens on the HTTP
port, one where a server accepts and never answers, one where another web server answers.
The host fails at once with the problem's name, and the CA (Pebble, behind a counting
proxy) receives no order, so no authorization either.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from modoboa_pro.testing import AcmeProxy, free_port
from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.adapters import preflight, webroot
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, Chain, proxied_ca
from .test_failures import http_get, provision_and_fail

pytestmark = pytest.mark.chain

OTHER_BODY = b"another web server\n"


@pytest.fixture
def ca(chain: Chain, settings) -> Iterator[AcmeProxy]:
    """Pebble behind a proxy that counts every request the plugin sends it."""
    with proxied_ca(chain, settings) as server:
        yield server


class _Other(http.server.BaseHTTPRequestHandler):
    def version_string(self) -> str:
        return "other/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(OTHER_BODY)))
        self.end_headers()
        self.wfile.write(OTHER_BODY)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def another_server(address: str, port: int) -> Iterator[None]:
    """A web server that is not ours, answering every path on ``address:port``."""
    server = http.server.ThreadingHTTPServer((address, port), _Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_listener(address: str, port: int) -> Iterator[None]:
    """Accepts connections (the kernel completes them) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, port))
    sock.listen(16)
    try:
        yield
    finally:
        sock.close()


def canaries(chain: Chain) -> list[str]:
    directory = chain.storage.joinpath(constants.WEBROOT_DIRNAME, *webroot.CHALLENGE_SUBPATH)
    if not directory.exists():
        return []
    return [p.name for p in directory.iterdir() if p.name.startswith(preflight.CANARY_PREFIX)]


def test_the_preflight_asks_the_dns_and_fetches_its_canary_then_orders(chain: Chain, ca):
    hostname = "checked.example.test"
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    asked = {(name.rstrip("."), qtype) for _, name, qtype in chain.dns.queries}
    assert {(hostname, 1), (hostname, 28)} <= asked  # A and AAAA, from the stub
    assert ca.count("newOrder") == 1
    assert canaries(chain) == []


def _nxdomain(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    chain.dns.nxdomain.add(hostname)


def _no_address(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    chain.dns.addresses[hostname] = []


def _resolver_down(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    settings.VIRTUALHOSTS_PREFLIGHT_RESOLVER = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(preflight, "RESOLVER_LIFETIME", 1.5)


def _resolver_silent(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    chain.dns.silent.add(hostname)
    monkeypatch.setattr(preflight, "RESOLVER_TIMEOUT", 0.5)
    monkeypatch.setattr(preflight, "RESOLVER_LIFETIME", 1.5)


def _refused(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    chain.dns.addresses[hostname] = ["127.0.0.2"]  # nginx listens on 127.0.0.1 only


def _refused_over_ipv6(chain: Chain, hostname: str, settings, monkeypatch) -> None:
    chain.dns.addresses[hostname] = ["127.0.0.1", "::1"]  # the AAAA record is wrong


FAULTS = {
    "nxdomain": (_nxdomain, "Pre-flight (DNS): {name} does not exist (NXDOMAIN"),
    "no-address": (_no_address, "Pre-flight (DNS): {name} has no address (no A or AAAA"),
    "resolver-down": (_resolver_down, "Pre-flight (DNS): the resolver 127.0.0.1:"),
    "resolver-silent": (_resolver_silent, "did not answer for {name} (no answer in time)"),
    "port-refused": (_refused, "Pre-flight (port {port}): connection refused by 127.0.0.2"),
    "ipv6-refused": (_refused_over_ipv6, "connection refused by ::1 port {port}"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failed_preflight_names_the_problem_and_spends_no_ca_attempt(
    chain: Chain, ca: AcmeProxy, fault: str, settings, monkeypatch
):
    hostname = f"pre-{fault}.example.test"
    make, expected = FAULTS[fault]
    make(chain, hostname, settings, monkeypatch)
    host = provision_and_fail(chain, hostname)

    assert host.failed_step == constants.STEP_ORDER
    assert expected.format(name=hostname, port=chain.nginx.http_port) in host.last_error
    assert "No order was sent to the certificate authority" in host.last_error
    assert host.next_attempt_at is not None and host.attempts == 1  # retried with back-off
    assert ca.count("newOrder") == 0  # the CA saw no order, so no authorization
    assert canaries(chain) == []
    # The HTTP-only site stays and serves the application meanwhile.
    assert http_get(chain, hostname).content == BACKEND_BODY


def test_no_answer_on_the_port_and_another_server_answering(chain: Chain, ca, monkeypatch):
    port = chain.nginx.http_port
    monkeypatch.setattr(preflight, "CANARY_TIMEOUT", 1.0)
    chain.dns.addresses["pre-timeout.example.test"] = ["127.0.0.3"]
    chain.dns.addresses["pre-other.example.test"] = ["127.0.0.4"]
    with silent_listener("127.0.0.3", port), another_server("127.0.0.4", port):
        quiet = provision_and_fail(chain, "pre-timeout.example.test")
        other = provision_and_fail(chain, "pre-other.example.test")

    assert f"Pre-flight (port {port}): no answer from 127.0.0.3 port {port}" in quiet.last_error
    assert (
        f"Pre-flight (another server): 127.0.0.4 port {port} (pre-other.example.test resolves "
        "to 127.0.0.4) answers, but not with our canary token (HTTP 200, Server: other/1.0)"
    ) in other.last_error
    for host in (quiet, other):
        assert "VIRTUALHOSTS_PREFLIGHT = False" in host.last_error  # the NAT hint
        assert host.failed_step == constants.STEP_ORDER
    assert ca.count("newOrder") == 0
    assert canaries(chain) == []


def test_once_dns_is_fixed_the_retry_orders(chain: Chain, ca):
    hostname = "pre-fixed.example.test"
    chain.dns.nxdomain.add(hostname)
    host = provision_and_fail(chain, hostname)
    assert ca.count("newOrder") == 0

    chain.dns.nxdomain.discard(hostname)
    services.retry_provisioning(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert ca.count("newOrder") == 1


def test_with_the_preflight_off_the_ca_is_asked(chain: Chain, ca, settings):
    """Behind a NAT without hairpinning the pre-flight cannot pass: the operator turns it
    off, and the CA's own validation decides (here it fails: the name points elsewhere)."""
    settings.VIRTUALHOSTS_PREFLIGHT = False
    hostname = "pre-off.example.test"
    chain.dns.addresses[hostname] = ["127.0.0.2"]  # Pebble asks the same stub
    host = provision_and_fail(chain, hostname)
    assert ca.count("newOrder") == 1
    assert "Pre-flight" not in host.last_error
    assert f"could not validate {hostname}" in host.last_error

"""Tests for the served-certificate check, against a real nginx serving HTTPS."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from modoboa_pro.virtualhosts.adapters import nginx, storage, tls, x509
from modoboa_pro.virtualhosts.errors import DeployNotVerified, NginxError

from .helpers import make_cert
from .test_nginx import NGINX, NginxServer, free_port

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


def https_site(port: int, hostname: str, storage_root) -> str:
    fullchain, privkey = storage.certificate_paths(storage_root, hostname)
    return (
        f"server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {hostname};\n"
        f"    ssl_certificate {fullchain};\n    ssl_certificate_key {privkey};\n"
        '    return 200 "ok";\n}\n'
    )


def store(storage_root, hostname: str, serial: int) -> str:
    key = x509.generate_private_key()
    storage.write_certificate_pair(storage_root, hostname, make_cert(key, (hostname,), serial), key)
    return format(serial, "x")


class HttpsServer(NginxServer):
    def __init__(self, prefix, storage_root) -> None:
        super().__init__(prefix)
        self.storage_root = storage_root
        self.tls_port = free_port()

    def add_site(self, hostname: str) -> None:
        nginx.write_site(
            self.sites, hostname, https_site(self.tls_port, hostname, self.storage_root)
        )

    def reload(self) -> None:
        nginx.test_and_reload(self.test_argv, self.reload_argv)


def steadily_served(port: int, hostname: str, serial: str) -> x509.CertificateFacts:
    """Poll until ``serial`` is served for ``hostname`` five times in a row.

    A reload is asynchronous: an old worker may still accept a connection after
    a new one answered, so one matching handshake proves little.
    """
    deadline = time.monotonic() + 10
    matched, seen = 0, "no handshake"
    while True:
        try:
            facts = tls.fetch_served_certificate("127.0.0.1", port, hostname, timeout=2)
            seen = facts.serial
            matched = matched + 1 if facts.serial == serial else 0
        except DeployNotVerified as err:
            matched, seen = 0, err.message
        if matched >= 5:
            return facts
        if time.monotonic() > deadline:
            raise AssertionError(f"{hostname} still serves {seen!r}, expected serial {serial}")
        time.sleep(0.02)


@pytest.fixture
def https_server(tmp_path) -> Iterator[HttpsServer]:
    server = HttpsServer(tmp_path / "nginx", tmp_path / "acme")
    # Two names on one port: the first block is the default for unknown SNI.
    store(server.storage_root, "a.test", 0xA1)
    store(server.storage_root, "b.test", 0xB1)
    server.add_site("a.test")
    server.add_site("b.test")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sni_selects_the_server_block(https_server):
    port = https_server.tls_port
    a = tls.fetch_served_certificate("127.0.0.1", port, "a.test")
    b = tls.fetch_served_certificate("127.0.0.1", port, "b.test")
    assert (a.serial, a.names) == ("a1", ("a.test",))
    assert (b.serial, b.names) == ("b1", ("b.test",))
    assert a.not_after.tzinfo is not None


def test_serial_changes_after_swap_and_reload(https_server):
    port = https_server.tls_port
    assert steadily_served(port, "a.test", "a1").serial == "a1"

    new_serial = store(https_server.storage_root, "a.test", 0xA2)
    assert new_serial == "a2"
    # Files swapped, no reload yet: nginx keeps the certificate it loaded, on every connection.
    for _ in range(5):
        assert tls.fetch_served_certificate("127.0.0.1", port, "a.test").serial == "a1"
        time.sleep(0.05)

    https_server.reload()
    facts = steadily_served(port, "a.test", new_serial)
    assert facts.names == ("a.test",)
    assert tls.fetch_served_certificate("127.0.0.1", port, "b.test").serial == "b1"


def test_rollback_and_reload_serves_previous(https_server):
    port = https_server.tls_port
    store(https_server.storage_root, "a.test", 0xA2)
    https_server.reload()
    steadily_served(port, "a.test", "a2")
    storage.rollback_pair(https_server.storage_root, "a.test")
    https_server.reload()
    steadily_served(port, "a.test", "a1")


def test_mismatched_files_are_refused_by_nginx_test(https_server):
    # Why the pair swap matters: nginx refuses a key that does not match its chain.
    fullchain, privkey = storage.certificate_paths(https_server.storage_root, "a.test")
    other = x509.generate_private_key()
    privkey.resolve().write_bytes(other)
    with pytest.raises(NginxError, match="key values mismatch"):
        https_server.reload()


def test_connection_refused_is_retryable():
    port = free_port()  # nothing listens there
    with pytest.raises(DeployNotVerified, match=f"127.0.0.1:{port}") as info:
        tls.fetch_served_certificate("127.0.0.1", port, "a.test", timeout=1)
    assert info.value.retryable is True


def test_non_tls_server_is_not_verified():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # The handshake fails on a listener that never answers TLS: bounded by the timeout.
        start = time.monotonic()
        with pytest.raises(DeployNotVerified):
            tls.fetch_served_certificate("127.0.0.1", port, "a.test", timeout=0.3)
        assert time.monotonic() - start < 3

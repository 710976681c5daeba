"""A flaky CA: Pebble rejecting half of all nonces (badNonce), as the fault suite will."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modoboa_pro.testing import PebbleServer
from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain

pytestmark = pytest.mark.chain


@pytest.fixture
def flaky_pebble(chain: Chain, tmp_path_factory, settings) -> Iterator[PebbleServer]:
    server = PebbleServer(
        tmp_path_factory.mktemp("flaky-pebble"),
        http_port=chain.nginx.http_port,
        dns_address=chain.dns.address,
        nonce_reject_percent=50,
    )
    server.start()
    settings.ACME_DIRECTORY_URL = server.directory_url
    settings.ACME_CA_BUNDLE = str(server.ca_bundle)
    yield server
    server.stop()


def test_bad_nonces_do_not_fail_provisioning(chain: Chain, flaky_pebble):
    hosts = [VirtualHost.objects.create(hostname=f"flaky{i}.example.test") for i in range(3)]
    chain.drain()
    for host in hosts:
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error

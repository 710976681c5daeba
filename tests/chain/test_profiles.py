"""ACME profiles through the real Pebble, behind a proxy that adds what Pebble 2.4 lacks.

The proxy advertises ``meta.profiles`` in the directory, records the ``profile`` of every
newOrder (read from the JWS payload) and can refuse a profile as a CA refuses an account;
every certificate is still issued by Pebble and checked as nginx serves it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modoboa_pro.testing import AcmeProxy
from modoboa_pro.testing.acme_proxy import INVALID_PROFILE, UNAUTHORIZED
from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, proxied_ca
from .test_ca_outages import assert_pair_served
from .test_failures import provision_and_fail

pytestmark = pytest.mark.chain

OFFERED = {
    "classic": "The profile you're used to",
    "tlsserver": "45-day certificates for TLS servers",
    "shortlived": "6-day certificates",
}


@pytest.fixture
def ca(chain: Chain, settings) -> Iterator[AcmeProxy]:
    """Pebble behind the proxy, which offers ``OFFERED``."""
    with proxied_ca(chain, settings) as server:
        server.profiles.offer(**OFFERED)
        yield server


def provision_active(chain: Chain, hostname: str, **fields: str) -> VirtualHost:
    host = VirtualHost.objects.create(hostname=hostname, **fields)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert_pair_served(chain, host)
    return host


def test_without_a_profile_the_order_carries_none(chain: Chain, ca: AcmeProxy):
    provision_active(chain, "default.example.test")
    assert ca.profiles.ordered == [None]


def test_the_instance_profile_and_a_hosts_own_are_sent(chain: Chain, ca: AcmeProxy, settings):
    settings.ACME_PROFILE = "tlsserver"
    provision_active(chain, "server.example.test")
    provision_active(chain, "short.example.test", acme_profile="shortlived")  # wins
    assert ca.profiles.ordered == ["tlsserver", "shortlived"]


@pytest.mark.parametrize("offered", [OFFERED, {}], ids=["other-profiles", "no-profiles"])
def test_a_profile_the_ca_does_not_offer_is_named_with_those_it_does(
    chain: Chain, ca: AcmeProxy, settings, offered
):
    ca.profiles.offer(**offered)
    settings.ACME_PROFILE = "longlived"
    host = provision_and_fail(chain, "unknown-profile.example.test")
    choices = "classic, shortlived, tlsserver" if offered else "none: it does not support"
    assert host.failed_step == constants.STEP_ORDER
    assert (
        f"The ACME profile 'longlived' is not offered by the CA at {ca.directory_url} "
        f"(profiles offered: {choices}" in host.last_error
    )
    assert "Change ACME_PROFILE" in host.last_error
    assert host.next_attempt_at is None  # a setting to change: no retry would help
    assert ca.count("newOrder") == 0


@pytest.mark.parametrize("problem_type", [INVALID_PROFILE, UNAUTHORIZED])
def test_a_preferred_profile_refused_for_the_account_falls_back_to_the_default(
    chain: Chain, ca: AcmeProxy, settings, problem_type
):
    settings.ACME_PROFILE = "shortlived"
    ca.profiles.refuse("shortlived", problem_type=problem_type)
    provision_active(chain, "fallback.example.test")
    assert ca.profiles.ordered == ["shortlived", None]
    assert (ca.count("newOrder", refused=True), ca.count("newOrder")) == (1, 2)


@pytest.mark.parametrize("problem_type", [INVALID_PROFILE, UNAUTHORIZED])
def test_a_hosts_own_profile_refused_for_the_account_fails_saying_so(
    chain: Chain, ca: AcmeProxy, settings, problem_type
):
    settings.ACME_PROFILE = "tlsserver"  # preferred: the host's own choice comes first
    ca.profiles.refuse("shortlived", problem_type=problem_type)
    host = VirtualHost.objects.create(hostname="required.example.test", acme_profile="shortlived")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_ORDER
    assert (
        "The CA does not let this account use the ACME profile 'shortlived' for "
        "required.example.test: account is not permitted to use the profile 'shortlived'. "
        "Choose another profile for this host" in host.last_error
    )
    assert host.next_attempt_at is None
    assert ca.profiles.ordered == ["shortlived"]  # no silent fallback

"""A rate-limiting CA: 429 ``rateLimited`` with a Retry-After, from a proxy in front of Pebble.

The host shows when it will be retried (the CA's Retry-After, in either form), and neither
the retry sweep nor the daily scan sends a new order before that time: the proxy counts them.
Time is moved through the ``now`` the sweep and the scan take.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from modoboa_pro.testing import AcmeProxy, http_date, rate_limited
from modoboa_pro.virtualhosts import constants, jobs, policy, presenters, retries, scan
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, proxied_ca
from .test_ca_outages import assert_pair_served
from .test_failures import provision_and_fail
from .test_renewal import served_serial, stand_in

pytestmark = pytest.mark.chain

SECOND = datetime.timedelta(seconds=1)
# Longer than the first back-off step (1 minute), so the CA's time is the one that counts.
WAIT = datetime.timedelta(hours=2)
DETAIL = "too many new orders (10) from this account in the last 3h0m0s"


@pytest.fixture
def proxy(chain: Chain, settings) -> Iterator[AcmeProxy]:
    """The plugin talks to Pebble through the proxy, trusting the proxy's test CA."""
    with proxied_ca(chain, settings) as server:
        yield server


def retry_after(form: str) -> tuple[str, datetime.datetime | None]:
    """The header's value, and the instant it names when it is an HTTP-date."""
    if form == "http-date":
        until = (timezone.now() + WAIT).replace(microsecond=0)
        return http_date(until), until
    return str(int(WAIT.total_seconds())), None


def assert_retry_time(
    host: VirtualHost, named: datetime.datetime | None, sent: datetime.datetime
) -> None:
    """``next_attempt_at`` is the CA's Retry-After: the instant named, or ``WAIT`` after
    the answer (received between ``sent`` and the host's failure)."""
    if named is not None:
        assert host.next_attempt_at == named
    else:
        assert sent + WAIT <= host.next_attempt_at <= host.updated_at + WAIT


def shown_by_api(host: VirtualHost) -> dict:
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    client = APIClient()
    token = Token.objects.create(user=User.objects.get(username="admin"))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    answer = client.get(f"/api/v2/virtualhosts/{host.pk}/")
    assert answer.status_code == 200, answer.content
    return answer.json()


def nothing_retried_before(chain: Chain, proxy: AcmeProxy, host: VirtualHost) -> None:
    """One second before the retry time: the sweep and the scan send no order."""
    orders = proxy.count("newOrder")
    early = host.next_attempt_at - SECOND
    assert retries.run(letsencrypt=True, now=early).retried == []
    report = scan.run(
        chain.storage,
        30,
        lambda h: pytest.fail(f"{h} retried early"),
        now=early,
        list_verdicts=True,
    )
    assert all(v.action != policy.RENEW for v in report.verdicts)
    assert jobs.check_certificate_renewals()["retried"] == []  # the real one, now
    chain.drain()
    assert proxy.count("newOrder") == orders
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED


@pytest.mark.parametrize("form", ["delta-seconds", "http-date"])
def test_a_rate_limited_order_is_retried_at_the_cas_time(chain: Chain, proxy: AcmeProxy, form):
    hostname = f"limited-{form}.example.test"
    header, named = retry_after(form)
    proxy.refuse("newOrder", rate_limited(DETAIL, header))
    sent = timezone.now()
    host = provision_and_fail(chain, hostname)

    assert host.failed_step == constants.STEP_ORDER
    assert_retry_time(host, named, sent)
    assert (
        f"The certificate authority rate-limited us while ordering a certificate for "
        f"{hostname}: {DETAIL}. Nothing will be retried before "
        f"{host.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC." in host.last_error
    )
    assert (proxy.count("newOrder", refused=True), proxy.count("newOrder")) == (1, 1)
    # What the page shows: "Retry at <that time>", and the reason.
    shown = shown_by_api(host)
    assert shown["status"] == constants.STATUS_FAILED
    assert shown["next_action"] == presenters.NEXT_RETRY
    assert parse_datetime(shown["next_attempt_at"]) == host.next_attempt_at
    assert "rate-limited" in shown["last_error"]

    nothing_retried_before(chain, proxy, host)

    proxy.allow()  # the limit has reset
    assert retries.run(letsencrypt=True, now=host.next_attempt_at).retried == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert proxy.count("newOrder", refused=False) == 1
    assert_pair_served(chain, host)


def test_a_rate_limited_renewal_keeps_its_certificate_until_the_cas_time(
    chain: Chain, proxy: AcmeProxy
):
    hostname = "limited-renewal.example.test"
    host = stand_in(chain, hostname)  # 5 days left: due
    chain.nginx.reload()
    old_serial = host.cert_serial
    header, named = retry_after("http-date")
    proxy.refuse("newOrder", rate_limited(DETAIL, header))

    assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED and host.failed_step == constants.STEP_ORDER
    assert host.next_attempt_at == named
    assert "rate-limited" in host.last_error
    assert served_serial(chain, hostname) == old_serial

    nothing_retried_before(chain, proxy, host)

    proxy.allow()
    assert retries.run(letsencrypt=True, now=host.next_attempt_at).retried == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != old_serial
    assert_pair_served(chain, host)

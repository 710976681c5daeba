"""The order budget end to end: a proxy in front of the real Pebble counts the new orders.

With a small budget set in settings, the order beyond it is never sent (the proxy sees no
newOrder), the host shows why and when it will be retried, renewals leave the headroom to
new hosts, and once the window has passed (time moved by moving the ledger's timestamps
back) the retry orders. An ARI renewal sending ``replaces`` is ordered whatever the count.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from django.utils import timezone

from modoboa_pro.testing import AcmeProxy, window
from modoboa_pro.virtualhosts import constants, jobs, presenters, retries
from modoboa_pro.virtualhosts.models import BudgetEntry, VirtualHost

from ..conftest import Chain, proxied_ca
from .test_ca_outages import assert_pair_served
from .test_failures import provision_active, provision_and_fail
from .test_rate_limits import shown_by_api
from .test_renewal import served_serial, stand_in

pytestmark = pytest.mark.chain

WINDOW = datetime.timedelta(hours=3)
SECOND = datetime.timedelta(seconds=1)


def use_proxy(chain: Chain, settings, *, renewal_info: bool) -> Iterator[AcmeProxy]:
    with proxied_ca(chain, settings, renewal_info=renewal_info) as server:
        # 3 orders per 3 hours, 1 of them kept for new hosts: renewals may use 2.
        settings.VIRTUALHOSTS_ORDER_BUDGET = {"orders_per_account": 3, "headroom_for_new_hosts": 1}
        yield server


@pytest.fixture
def proxy(chain: Chain, settings) -> Iterator[AcmeProxy]:
    yield from use_proxy(chain, settings, renewal_info=False)


@pytest.fixture
def ari_proxy(chain: Chain, settings) -> Iterator[AcmeProxy]:
    yield from use_proxy(chain, settings, renewal_info=True)


def orders_sent() -> list[datetime.datetime]:
    return sorted(BudgetEntry.objects.filter(kind="order").values_list("at", flat=True))


def time_passes(delta: datetime.timedelta) -> None:
    """The ledger's entries moved back: as if ``delta`` had passed since each was written."""
    for entry in BudgetEntry.objects.all():
        BudgetEntry.objects.filter(pk=entry.pk).update(at=entry.at - delta)


def retry(chain: Chain, host: VirtualHost) -> VirtualHost:
    """The retry sweep at the host's retry time, then the queued run."""
    assert retries.run(letsencrypt=True, now=host.next_attempt_at).retried == [host.hostname]
    chain.drain()
    host.refresh_from_db()
    return host


def test_the_order_beyond_the_budget_is_not_sent_and_is_retried_when_it_allows(
    chain: Chain, proxy: AcmeProxy
):
    first = provision_active(chain, "budget-new-1.example.test")
    provision_active(chain, "budget-new-2.example.test")
    assert proxy.count("newOrder") == 2
    oldest = orders_sent()[0]

    # A renewal now would eat the headroom kept for new hosts: not sent.
    renewal = stand_in(chain, "budget-renewal.example.test")  # 5 days left: due
    chain.nginx.reload()
    old_serial = renewal.cert_serial
    assert jobs.check_certificate_renewals()["enqueued"] == [renewal.hostname]
    chain.drain()
    assert proxy.count("newOrder") == 2
    renewal.refresh_from_db()
    assert renewal.status == constants.STATUS_FAILED
    assert renewal.failed_step == constants.STEP_ORDER
    assert renewal.next_attempt_at == oldest + WINDOW
    assert renewal.last_error == (
        "Not ordered: 2 order(s) for this account in the last 3 hours (the CA allows 3, "
        "1 of them kept for new hosts); next possible at "
        f"{oldest + WINDOW:%Y-%m-%d %H:%M} UTC."
    )
    assert served_serial(chain, renewal.hostname) == old_serial  # still served meanwhile
    shown = shown_by_api(renewal)
    assert shown["next_action"] == presenters.NEXT_RETRY
    assert "Not ordered: 2 order(s)" in shown["last_error"]

    # A new host may use the headroom.
    provision_active(chain, "budget-new-3.example.test")
    assert proxy.count("newOrder") == 3
    # The next one may not: the whole budget is spent.
    late = provision_and_fail(chain, "budget-new-4.example.test")
    assert proxy.count("newOrder") == 3
    assert late.failed_step == constants.STEP_ORDER
    assert late.last_error.startswith(
        "Not ordered: 3 order(s) for this account in the last 3 hours (the CA allows 3); "
        "next possible at "
    )
    assert late.next_attempt_at == oldest + WINDOW

    # Nothing is retried before that time.
    assert retries.run(letsencrypt=True, now=late.next_attempt_at - SECOND).retried == []

    # Three hours later (the ledger moved back): the retries order.
    time_passes(WINDOW)
    retried = retries.run(letsencrypt=True, now=late.next_attempt_at).retried
    assert sorted(retried) == [late.hostname, renewal.hostname]
    chain.drain()
    assert proxy.count("newOrder") == 5
    for host in (late, renewal):
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert_pair_served(chain, host)
    assert renewal.cert_serial != old_serial
    first.refresh_from_db()
    assert first.status == constants.STATUS_ACTIVE


def test_an_ari_renewal_sending_replaces_is_not_counted(chain: Chain, ari_proxy: AcmeProxy):
    started = timezone.now() - datetime.timedelta(hours=1)  # the CA wants the renewal now
    ari_proxy.set_renewal_info(None, window(started, started + datetime.timedelta(days=1)))
    host = provision_active(chain, "budget-ari.example.test")
    provision_active(chain, "budget-ari-2.example.test")
    assert ari_proxy.count("newOrder") == 2  # renewals may use no more

    old_serial = host.cert_serial
    assert host.hostname in jobs.check_certificate_renewals()["enqueued"]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != old_serial
    assert ari_proxy.count("newOrder") >= 3
    replacing = [o for o in ari_proxy.orders() if o.get("replaces")]
    assert len(replacing) == ari_proxy.count("newOrder") - 2  # every renewal: exempt
    assert BudgetEntry.objects.filter(hostname=host.hostname, exempt=True).count() == 1
    assert served_serial(chain, host.hostname) == host.cert_serial


def test_a_name_whose_validations_keep_failing_is_not_ordered_for(
    chain: Chain, proxy: AcmeProxy, settings
):
    settings.VIRTUALHOSTS_ORDER_BUDGET = {"failed_validations_per_hostname": 2}
    settings.VIRTUALHOSTS_PREFLIGHT = False  # the CA's own validation fails (as behind a NAT)
    hostname = "budget-nx.example.test"
    chain.dns.nxdomain.add(hostname)
    host = provision_and_fail(chain, hostname)
    assert "could not validate" in host.last_error
    host = retry(chain, host)
    assert "could not validate" in host.last_error
    assert proxy.count("newOrder") == 2
    first_failure = min(
        BudgetEntry.objects.filter(kind="failed_validation").values_list("at", flat=True)
    )

    host = retry(chain, host)  # a third failure would cost the CA a failed validation
    assert proxy.count("newOrder") == 2
    assert host.status == constants.STATUS_FAILED and host.failed_step == constants.STEP_ORDER
    free_at = first_failure + datetime.timedelta(hours=1)
    # Not before the budget allows; here the back-off (100 minutes at the third attempt) is
    # later still: a name that keeps failing is not retried sooner for the budget's sake.
    assert host.next_attempt_at >= free_at
    assert host.last_error == (
        f"Not ordered: 2 failed validation(s) for {hostname} in the last hour (the CA allows "
        f"2); next possible at {free_at:%Y-%m-%d %H:%M} UTC. Check that {hostname} resolves "
        "to this server and that port 80 is reachable meanwhile."
    )

    chain.dns.nxdomain.discard(hostname)  # fixed meanwhile; an hour later the retry orders
    time_passes(datetime.timedelta(hours=1))
    host = retry(chain, host)
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert proxy.count("newOrder") == 3
    assert_pair_served(chain, host)

"""Paused hosts, through real Redis, nginx, Pebble and the DNS stub.

A name that no longer resolves (NXDOMAIN from the DNS stub) fails every run; after
``VIRTUALHOSTS_PAUSE_AFTER_DAYS`` of failures the host is paused: an alarm, a message that
says what to do, and neither the retry sweep nor the daily scan runs it again until an
operator retries. A CA that answers with Let's Encrypt's pause (a proxy in front of Pebble)
pauses the host at once and its link is shown. Days pass through a clock seam
(``django.utils.timezone.now``), as in test_spread.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import django_rq
import pytest
from django.utils import timezone

from modoboa_pro.testing import AcmeProxy, paused
from modoboa_pro.virtualhosts import constants, jobs, policy, services
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, proxied_ca
from .test_failures import open_alarms
from .test_rate_limits import shown_by_api
from .test_renewal import served_serial, stand_in
from .test_retries import fail_by_dns

pytestmark = pytest.mark.chain

MINUTE = datetime.timedelta(minutes=1)
DAY = datetime.timedelta(days=1)
SWEEP_EVERY = datetime.timedelta(minutes=5)  # cron_config.py's retry sweep


@pytest.fixture
def clock(monkeypatch) -> dict[str, datetime.datetime]:
    """``timezone.now`` as the test sets it: the scan, the sweep and the runs read it."""
    now = {"now": timezone.now()}
    monkeypatch.setattr(timezone, "now", lambda: now["now"])
    return now


def runs(host: VirtualHost) -> int:
    """How many runs reached the pre-flight (each one a failed order step)."""
    return host.events.filter(step=constants.STEP_ORDER).count()


def nothing_runs_for_days(chain: Chain, host: VirtualHost, clock: dict, days: int) -> None:
    """Days of sweeps and daily scans: nothing is queued, no run starts."""
    before = runs(host)
    for _ in range(days):
        clock["now"] += DAY
        assert jobs.retry_due_virtualhosts()["retried"] == []
        scan = jobs.check_certificate_renewals()
        assert scan["enqueued"] == [] and scan["retried"] == []
        assert f"1 paused ({host.hostname})" in scan["summary"]
        assert django_rq.get_queue("modoboa").count == 0
        chain.drain()
    host.refresh_from_db()
    assert runs(host) == before and host.status == constants.STATUS_PAUSED


def test_a_renewal_failing_for_a_week_is_paused_until_renew_now(chain: Chain, clock):
    """Daily retries of a renewal whose name no longer resolves, for the documented number
    of days; then paused, the old certificate still served; Renew now once DNS is back."""
    hostname = "moved.example.test"
    host = stand_in(chain, hostname, lifetime=90, remaining=29)  # due since a day
    chain.nginx.reload()
    serial = served_serial(chain, hostname)
    chain.dns.nxdomain.add(hostname)

    assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
    chain.drain()
    host.refresh_from_db()
    first_failure = host.failing_since
    assert host.status == constants.STATUS_FAILED and first_failure is not None
    # The retry sweep every 5 minutes, the scan once a day, until the host stops failing
    # plainly: it is retried on its back-off (1, 10, 100 minutes, then daily).
    day = clock["now"]
    while host.status == constants.STATUS_FAILED:
        assert clock["now"] - first_failure < policy.PAUSE_AFTER + DAY, "never paused"
        clock["now"] += SWEEP_EVERY
        jobs.retry_due_virtualhosts()
        if clock["now"] - day >= DAY:
            day = clock["now"]
            jobs.check_certificate_renewals()
        chain.drain()
        host.refresh_from_db()
    assert host.status == constants.STATUS_PAUSED
    paused_after = host.updated_at - first_failure
    assert policy.PAUSE_AFTER <= paused_after < policy.PAUSE_AFTER + DAY
    # 1, 10 and 100 minutes, then daily: about ten runs in a week, not hundreds.
    assert 3 + 7 <= host.attempts <= 3 + 8, host.attempts
    assert host.next_attempt_at is None
    assert host.last_error.startswith("Paused: every run has failed for 7 day(s)")
    assert "Renew now" in host.last_error and "NXDOMAIN" in host.last_error
    assert "stays served" in host.last_error
    [alarm] = open_alarms(host)
    assert alarm.startswith(f"Virtual host {hostname}: order failed. Paused: every run")
    shown = shown_by_api(host)
    assert shown["status"] == "paused" and shown["next_attempt_at"] is None
    assert shown["failing_since"] is not None

    nothing_runs_for_days(chain, host, clock, days=5)
    assert served_serial(chain, hostname) == serial  # the old certificate is still served

    chain.dns.nxdomain.discard(hostname)
    services.renew_now(host)
    host.refresh_from_db()
    assert host.status == constants.STATUS_PENDING and host.failing_since is None
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.attempts == 0 and host.failing_since is None and open_alarms(host) == []
    assert served_serial(chain, hostname) == host.cert_serial != serial


def test_a_provisioning_failing_for_days_is_paused_until_retry(chain: Chain, clock, settings):
    """Failures backdated over the setting's days: the next one pauses; Retry provisioning
    once DNS is fixed brings the host to active."""
    settings.VIRTUALHOSTS_PAUSE_AFTER_DAYS = 3
    hostname = "never.example.test"
    host = fail_by_dns(chain, hostname)
    VirtualHost.objects.filter(pk=host.pk).update(
        attempts=6,
        failing_since=clock["now"] - 3 * DAY + MINUTE,
        next_attempt_at=clock["now"] + MINUTE,
    )
    clock["now"] += 2 * MINUTE
    assert jobs.retry_due_virtualhosts()["retried"] == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_PAUSED and host.attempts == 7
    assert host.last_error.startswith("Paused: every run has failed for 3 day(s)")
    assert "Retry provisioning" in host.last_error
    assert any("failed. Paused: every run" in title for title in open_alarms(host))

    nothing_runs_for_days(chain, host, clock, days=3)

    chain.dns.nxdomain.discard(hostname)
    services.retry_provisioning(host)
    host.refresh_from_db()
    assert host.status == constants.STATUS_PENDING
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.failing_since is None and open_alarms(host) == []


@pytest.fixture
def ca(chain: Chain, settings) -> Iterator[AcmeProxy]:
    with proxied_ca(chain, settings) as server:
        yield server


@pytest.mark.parametrize("status", [403, 429])
def test_the_cas_pause_pauses_at_once_and_shows_its_link(chain: Chain, ca, clock, status):
    hostname = "refused.example.test"
    answer = paused(hostname, status=status)
    link = answer.detail.rsplit(" ", 1)[-1]
    ca.refuse("newOrder", answer, times=1)
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_PAUSED and host.attempts == 1
    assert host.last_error.startswith("Paused by the certificate authority")
    assert f"unpause it at {link} and" in host.last_error
    assert host.next_attempt_at is None
    assert any(link in title for title in open_alarms(host))
    assert link in shown_by_api(host)["last_error"]
    assert ca.count("newOrder") == 1

    nothing_runs_for_days(chain, host, clock, days=2)
    assert ca.count("newOrder") == 1  # nothing more was asked of the CA

    # The operator unpaused it at the CA, then retries.
    services.retry_provisioning(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert ca.count("newOrder") == 2

"""Renewals spread over VIRTUALHOSTS_RENEWAL_SPREAD, through real Redis, Pebble and nginx.

Twenty hosts become due at the same moment. The daily scan renews only those whose planned
time (due time + the host's stable share of the spread) has come; the retry sweep, every
five minutes from Modoboa's RQ cron, renews each of the others once its time comes. Time
is moved with a clock seam (``django.utils.timezone.now``): the scan, the sweep and the
renewal runs all read it, while Pebble and nginx stay on real time.
"""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, jobs, policy, presenters
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_renewal import queued_renewals, renew_id, served_serial, stand_in

pytestmark = pytest.mark.chain

HOUR = datetime.timedelta(hours=1)
SPREAD = 8 * HOUR
SWEEP_EVERY = datetime.timedelta(minutes=5)  # cron_config.py's retry sweep


def planned(host: VirtualHost) -> datetime.datetime:
    assert host.cert_not_before is not None and host.cert_not_after is not None
    return policy.planned_renewal_at(
        30,
        host.cert_not_before,
        host.cert_not_after,
        spread=SPREAD,
        share=policy.jitter(host.hostname, host.cert_serial),
    )


def orders(host: VirtualHost) -> int:
    return host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK).count()


def test_twenty_due_hosts_are_renewed_over_the_spread_not_at_one_scan(
    chain: Chain, settings, monkeypatch
):
    settings.VIRTUALHOSTS_RENEWAL_SPREAD = int(SPREAD.total_seconds())
    # 90-day certificates that all became due (30 days left) four hours ago.
    hosts = [
        stand_in(chain, f"h{i:02d}.example.test", lifetime=90, remaining=30 - 4 / 24)
        for i in range(20)
    ]
    chain.nginx.reload()
    first = {h.hostname: served_serial(chain, h.hostname) for h in hosts}
    plan = {h.hostname: planned(h) for h in hosts}
    due_at = policy.renewal_due_at(30, hosts[0].cert_not_before, hosts[0].cert_not_after)
    cap = policy.latest_renewal_at(30, hosts[0].cert_not_before, hosts[0].cert_not_after, SPREAD)
    assert cap == due_at + SPREAD  # 8 hours: under a day, the cap of a 90-day certificate
    assert all(due_at <= at < cap for at in plan.values())

    start = timezone.now()
    clock = {"now": start}
    monkeypatch.setattr(timezone, "now", lambda: clock["now"])

    # The daily scan: only the hosts whose planned time has come.
    result = jobs.check_certificate_renewals()
    now_due = sorted(name for name, at in plan.items() if at <= start)
    assert sorted(result["enqueued"]) == now_due
    assert 0 < len(now_due) < 20, "a hash that spreads: some now, some later"
    assert result["due"] == len(now_due)
    # Each host shows its planned time, as the next renewal.
    for host in hosts:
        host.refresh_from_db()
        assert host.next_attempt_at == plan[host.hostname]
        assert presenters.next_action(host) == presenters.NEXT_RENEWAL
    chain.drain()
    assert chain.failed_jobs() == []

    renewed_at: dict[str, datetime.datetime] = {name: start for name in now_due}
    while clock["now"] < cap + SWEEP_EVERY:
        clock["now"] += SWEEP_EVERY
        swept = jobs.retry_due_virtualhosts()
        expected = sorted(n for n, at in plan.items() if at <= clock["now"] and n not in renewed_at)
        assert sorted(swept["renewed"]) == expected, clock["now"]
        assert swept["retried"] == []
        renewed_at.update({name: clock["now"] for name in expected})
        chain.drain()
        assert chain.failed_jobs() == []
        assert queued_renewals() == []

    assert len(renewed_at) == 20
    for host in hosts:
        host.refresh_from_db()
        name = host.hostname
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert orders(host) == 1, name  # renewed once, at its planned time
        assert host.cert_serial != first[name]
        assert served_serial(chain, name) == host.cert_serial
        # Renewed by the first sweep at or after its planned time, never after the cap.
        assert plan[name] <= renewed_at[name] < plan[name] + SWEEP_EVERY or name in now_due
        assert renewed_at[name] <= cap + SWEEP_EVERY
        # The new certificate has its own planned time, far ahead: nothing loops.
        assert host.next_attempt_at is not None and host.next_attempt_at > clock["now"]

    # The daily scan, the safety net, finds nothing left to do.
    result = jobs.check_certificate_renewals()
    assert (result["due"], result["enqueued"], result["retried"]) == (0, [], [])


def test_the_daily_scan_renews_what_the_sweep_missed(chain: Chain, settings, monkeypatch):
    settings.VIRTUALHOSTS_RENEWAL_SPREAD = int(SPREAD.total_seconds())
    host = stand_in(chain, "late.example.test", lifetime=90, remaining=30)  # due now
    chain.nginx.reload()
    before = served_serial(chain, host.hostname)
    at = planned(host)
    # The next daily scan, a day later, renews whatever the sweep did not.
    later = at + 24 * HOUR
    monkeypatch.setattr(timezone, "now", lambda: later)
    result = jobs.check_certificate_renewals()
    assert result["enqueued"] == [host.hostname]
    assert queued_renewals() == [renew_id(host)]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert served_serial(chain, host.hostname) == host.cert_serial != before


def test_a_renewal_lost_with_the_queue_is_queued_again_by_the_sweep(chain: Chain):
    """A renewal the scan queued, lost (Redis restarted without persistence after the scan):
    the host keeps its planned time in the past, so the next sweep queues it again."""
    import django_rq

    host = stand_in(chain, "lost.example.test", lifetime=90, remaining=25)  # due 5 days ago
    chain.nginx.reload()
    before = served_serial(chain, host.hostname)
    assert jobs.check_certificate_renewals()["enqueued"] == [host.hostname]
    django_rq.get_queue("modoboa").empty()  # the fault: the queued job is gone
    assert queued_renewals() == []
    swept = jobs.retry_due_virtualhosts()
    assert swept["renewed"] == [host.hostname]
    assert queued_renewals() == [renew_id(host)]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert served_serial(chain, host.hostname) == host.cert_serial != before
    assert orders(host) == 1
    assert jobs.retry_due_virtualhosts()["renewed"] == []  # planned anew, far ahead

"""The certificate health line: the "Modoboa Pro" menu item and the Information page."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, health
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost

NOW = datetime.datetime(2026, 11, 29, 12, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("counts", "color", "text"),
    [
        (health.Counts(), health.INFO, "No virtual hosts yet"),
        (
            health.Counts(total=14, by_status={"active": 14}),
            health.SUCCESS,
            "14 hosts, all certificates valid",
        ),
        (
            health.Counts(total=1, by_status={"active": 1}),
            health.SUCCESS,
            "1 host, certificate valid",
        ),
        (
            health.Counts(total=3, by_status={"active": 2, "failed": 1}),
            health.WARNING,
            "1 host failing",
        ),
        (
            health.Counts(total=3, by_status={"active": 1, "pending": 2}),
            health.INFO,
            "3 hosts, 2 being provisioned",
        ),
        (
            health.Counts(total=2, by_status={"http_only": 2}),
            health.INFO,
            "2 hosts, served over HTTP only",
        ),
        (
            health.Counts(total=4, by_status={"active": 4}, overdue=2),
            health.WARNING,
            "2 certificates overdue for renewal",
        ),
        # A scan interrupted by Redis outranks the hosts' own warnings.
        (
            health.Counts(total=4, by_status={"failed": 1, "active": 3}, scan_not_queued=3),
            health.WARNING,
            "Renewal scan interrupted: 3 renewals not queued",
        ),
        # Worst first: an expired certificate outranks a stopped scan, which outranks a failure.
        (
            health.Counts(total=4, by_status={"failed": 1, "active": 3}, scan_stale=True),
            health.ERROR,
            "Renewal scan not running",
        ),
        (
            health.Counts(total=4, by_status={"failed": 2}, expired=1, scan_stale=True),
            health.ERROR,
            "1 certificate expired",
        ),
    ],
)
def test_assess_names_the_worst_problem_first(counts, color, text):
    assert health.assess(counts) == health.Health(color, text)


def _host(
    name: str,
    status: str,
    *,
    days_left: int | None = None,
    lifetime: int = 90,
    enabled: bool = True,
) -> VirtualHost:
    host = VirtualHost(hostname=name, status=status, enabled=enabled)
    if days_left is not None:
        host.cert_not_after = NOW + datetime.timedelta(days=days_left)
        host.cert_not_before = host.cert_not_after - datetime.timedelta(days=lifetime)
    return host


def test_collect_counts_enabled_hosts_and_certificates(db):
    VirtualHost.objects.bulk_create(
        [
            _host("a.example.test", constants.STATUS_ACTIVE, days_left=60),
            _host("b.example.test", constants.STATUS_FAILED, days_left=-1),  # expired
            _host("c.example.test", constants.STATUS_ACTIVE, days_left=5),  # overdue (due at 30)
            _host("d.example.test", constants.STATUS_DISABLED, days_left=-30, enabled=False),
            _host("e.example.test", constants.STATUS_PENDING),
        ]
    )
    RenewalScan.objects.create(started_at=NOW, finished_at=NOW)
    counts = health.collect(VirtualHost.objects.all(), 30, NOW)
    assert counts.total == 4  # the disabled host needs nothing
    assert (counts.expired, counts.overdue, counts.failing, counts.in_progress) == (1, 2, 1, 1)
    assert counts.scan_stale is False
    assert health.assess(counts) == health.Health(health.ERROR, "1 certificate expired")


def test_collect_sees_a_stopped_scan(db):
    long_ago = timezone.now() - datetime.timedelta(days=3)
    VirtualHost.objects.bulk_create(
        [_host("a.example.test", constants.STATUS_ACTIVE, days_left=60)]
    )
    VirtualHost.objects.update(created_at=long_ago)
    counts = health.collect(VirtualHost.objects.all(), 30)
    assert counts.scan_stale is True
    assert health.assess(counts).text == "Renewal scan not running"

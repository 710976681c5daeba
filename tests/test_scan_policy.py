"""The renewal policy as pure functions: due rule with its half-lifetime cap, backoff, alarms."""

from __future__ import annotations

import datetime

import pytest

from modoboa_pro.virtualhosts import renewal

NOW = datetime.datetime(2027, 3, 1, 3, 17, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def cert(lifetime_days: float, left_days: float) -> tuple[datetime.datetime, datetime.datetime]:
    not_after = NOW + datetime.timedelta(days=left_days)
    return not_after - datetime.timedelta(days=lifetime_days), not_after


@pytest.mark.parametrize(
    ("lifetime", "left", "due"),
    [
        (90, 31, False),  # 90-day certificate: the configured 30 days apply
        (90, 29, True),
        (90, 5, True),
        (64, 31, False),  # 2027 lifetimes: 30 < 32, still the configured threshold
        (64, 29, True),
        (45, 23, False),  # 2028 lifetimes: capped at 22.5 days
        (45, 22, True),
        (6, 5, False),  # 6-day certificates: capped at 3 days, not renewed on every scan
        (6, 3.1, False),
        (6, 2.9, True),
        (90, -1, True),  # expired
    ],
)
def test_due_rule_caps_the_threshold_at_half_the_lifetime(lifetime, left, due):
    not_before, not_after = cert(lifetime, left)
    assert renewal.is_due(NOW, 30, not_before, not_after) is due
    decision = renewal.decide(NOW, 30, not_before, not_after)
    assert (decision.action == renewal.RENEW) is due


def test_effective_threshold():
    assert renewal.effective_threshold(30, *cert(90, 10)) == 30 * DAY
    assert renewal.effective_threshold(30, *cert(6, 1)) == 3 * DAY
    assert renewal.effective_threshold(7, *cert(45, 1)) == 7 * DAY


def test_a_six_day_certificate_renewed_daily_is_due_every_third_day():
    """Daily scans on a 6-day certificate: one renewal per three days, not one per scan."""
    issued = NOW
    renewal_days = []
    for day in range(30):
        now = NOW + day * DAY
        if renewal.is_due(now, 30, issued, issued + 6 * DAY):
            renewal_days.append(day)
            issued = now
    # Under the CA's duplicate limit (5 per week); a fixed 30 days would renew 30 times.
    assert renewal_days == [3, 6, 9, 12, 15, 18, 21, 24, 27]


def test_backoff_is_respected_until_the_planned_retry():
    not_before, not_after = cert(90, 5)
    later = NOW + datetime.timedelta(minutes=10)
    waiting = renewal.decide(NOW, 30, not_before, not_after, attempts=2, next_attempt_at=later)
    assert waiting.action == renewal.SKIP_BACKOFF
    assert "next try after" in waiting.reason
    retry = renewal.decide(later, 30, not_before, not_after, attempts=2, next_attempt_at=later)
    assert retry.action == renewal.RENEW
    # No planned time (an error an operator must fix): the daily scan tries again.
    assert renewal.decide(NOW, 30, not_before, not_after, attempts=3).action == renewal.RENEW
    # A success resets attempts: next_attempt_at then holds the due date, not a backoff.
    assert not renewal.in_backoff(NOW, 0, later)


def test_backoff_table_and_retry_after():
    assert [renewal.retry_delay(n) for n in (1, 2, 3, 4, 9)] == [
        datetime.timedelta(minutes=1),
        datetime.timedelta(minutes=10),
        datetime.timedelta(minutes=100),
        DAY,
        DAY,
    ]
    ca_says = NOW + 3 * datetime.timedelta(hours=1)
    assert renewal.next_attempt(NOW, 1, ca_says) == ca_says
    assert renewal.next_attempt(NOW, 4, ca_says) == NOW + DAY


def test_a_certificate_not_covering_the_hostname_is_renewed():
    decision = renewal.decide(NOW, 30, *cert(90, 80), covers_hostname=False)
    assert decision.action == renewal.RENEW
    assert "does not cover" in decision.reason


def test_not_due_reason_says_when():
    decision = renewal.decide(NOW, 30, *cert(90, 60))
    assert decision.action == renewal.SKIP_NOT_DUE
    assert decision.due_at == NOW + 30 * DAY
    assert decision.reason == f"not due until {NOW + 30 * DAY:%Y-%m-%d %H:%M} UTC"


def test_urgent_only_when_close_to_expiry_and_failing():
    _, soon = cert(90, 6)
    _, later = cert(90, 8)
    assert renewal.is_urgent(NOW, soon, attempts=1)
    assert not renewal.is_urgent(NOW, soon, attempts=0)
    assert not renewal.is_urgent(NOW, later, attempts=5)


def test_scan_staleness():
    recent = NOW - datetime.timedelta(hours=25)
    old = NOW - datetime.timedelta(hours=27)
    assert not renewal.is_scan_stale(NOW, recent, 3)
    assert renewal.is_scan_stale(NOW, old, 3)
    assert renewal.is_scan_stale(NOW, None, 1)
    assert not renewal.is_scan_stale(NOW, None, 0)  # nothing to renew, nothing to warn about
    # Never ran: counted from the first certificate, so a fresh install gets its first night.
    assert not renewal.is_scan_stale(NOW, None, 1, certificates_since=recent)
    assert renewal.is_scan_stale(NOW, None, 1, certificates_since=old)

"""The renewal policy as pure functions: due rule with its half-lifetime cap, backoff, alarms."""

from __future__ import annotations

import datetime

import pytest

from modoboa_pro.virtualhosts import policy

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
    assert policy.is_due(NOW, 30, not_before, not_after) is due
    decision = policy.decide(NOW, 30, not_before, not_after)
    assert (decision.action == policy.RENEW) is due


def test_effective_threshold():
    assert policy.effective_threshold(30, *cert(90, 10)) == 30 * DAY
    assert policy.effective_threshold(30, *cert(6, 1)) == 3 * DAY
    assert policy.effective_threshold(7, *cert(45, 1)) == 7 * DAY


def test_a_six_day_certificate_renewed_daily_is_due_every_third_day():
    """Daily scans on a 6-day certificate: one renewal per three days, not one per scan."""
    issued = NOW
    renewal_days = []
    for day in range(30):
        now = NOW + day * DAY
        if policy.is_due(now, 30, issued, issued + 6 * DAY):
            renewal_days.append(day)
            issued = now
    # Under the CA's duplicate limit (5 per week); a fixed 30 days would renew 30 times.
    assert renewal_days == [3, 6, 9, 12, 15, 18, 21, 24, 27]


def test_backoff_is_respected_until_the_planned_retry():
    not_before, not_after = cert(90, 5)
    later = NOW + datetime.timedelta(minutes=10)
    waiting = policy.decide(NOW, 30, not_before, not_after, attempts=2, next_attempt_at=later)
    assert waiting.action == policy.SKIP_BACKOFF
    assert "next try after" in waiting.reason
    retry = policy.decide(later, 30, not_before, not_after, attempts=2, next_attempt_at=later)
    assert retry.action == policy.RENEW
    # No planned time (an error an operator must fix): the daily scan tries again.
    assert policy.decide(NOW, 30, not_before, not_after, attempts=3).action == policy.RENEW
    # A success resets attempts: next_attempt_at then holds the due date, not a backoff.
    assert not policy.in_backoff(NOW, 0, later)


def test_backoff_table_and_retry_after():
    assert [policy.retry_delay(n) for n in (1, 2, 3, 4, 9)] == [
        datetime.timedelta(minutes=1),
        datetime.timedelta(minutes=10),
        datetime.timedelta(minutes=100),
        DAY,
        DAY,
    ]
    ca_says = NOW + 3 * datetime.timedelta(hours=1)
    assert policy.next_attempt(NOW, 1, ca_says) == ca_says
    assert policy.next_attempt(NOW, 4, ca_says) == NOW + DAY


def test_a_certificate_not_covering_the_hostname_is_renewed():
    decision = policy.decide(NOW, 30, *cert(90, 80), covers_hostname=False)
    assert decision.action == policy.RENEW
    assert "does not cover" in decision.reason


def test_not_due_reason_says_when():
    decision = policy.decide(NOW, 30, *cert(90, 60))
    assert decision.action == policy.SKIP_NOT_DUE
    assert decision.due_at == NOW + 30 * DAY
    assert decision.reason == f"not due until {NOW + 30 * DAY:%Y-%m-%d %H:%M} UTC"


def test_urgent_only_when_close_to_expiry_and_failing():
    _, soon = cert(90, 6)
    _, later = cert(90, 8)
    assert policy.is_urgent(NOW, soon, attempts=1)
    assert not policy.is_urgent(NOW, soon, attempts=0)
    assert not policy.is_urgent(NOW, later, attempts=5)


def test_scan_staleness():
    recent = NOW - datetime.timedelta(hours=25)
    old = NOW - datetime.timedelta(hours=27)
    assert not policy.is_scan_stale(NOW, recent, 3)
    assert policy.is_scan_stale(NOW, old, 3)
    assert policy.is_scan_stale(NOW, None, 1)
    assert not policy.is_scan_stale(NOW, None, 0)  # nothing to renew, nothing to warn about
    # Never ran: counted from the first certificate, so a fresh install gets its first night.
    assert not policy.is_scan_stale(NOW, None, 1, certificates_since=recent)
    assert policy.is_scan_stale(NOW, None, 1, certificates_since=old)


def test_no_certificate_is_its_own_action():
    decision = policy.decide(NOW, 30, None, None)
    assert decision.action == policy.NO_CERTIFICATE
    assert decision.reason == "no certificate yet" and decision.due_at is None


def test_an_unusable_file_is_renewed_unless_backing_off():
    problem = "certificate file /x/fullchain.pem is unusable: not PEM"
    # The problem wins over whatever facts were recorded: the file is what nginx reads.
    decision = policy.decide(NOW, 30, *cert(90, 60), problem=problem)
    assert (decision.action, decision.reason) == (policy.RENEW, problem)
    later = NOW + datetime.timedelta(minutes=10)
    waiting = policy.decide(NOW, 30, None, None, problem=problem, attempts=1, next_attempt_at=later)
    assert waiting.action == policy.SKIP_BACKOFF and problem in waiting.reason


def test_expired_certificates_are_renewed_with_the_date():
    decision = policy.decide(NOW, 30, *cert(90, -1))
    assert decision.action == policy.RENEW and decision.reason.startswith("expired on 2027-02-28")


@pytest.mark.parametrize(
    ("left", "overdue"),
    [(31, False), (29, False), (28.5, False), (27.9, True), (-0.1, True)],
)
def test_overdue_two_days_after_the_due_date(left, overdue):
    assert policy.is_overdue(NOW, 30, *cert(90, left)) is overdue
    assert not policy.is_overdue(NOW, 30, None, None)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (datetime.timedelta(days=3, hours=5), "3 day(s)"),
        (datetime.timedelta(hours=23, minutes=59), "23 hour(s)"),
        (datetime.timedelta(minutes=-5), "0 hour(s)"),
    ],
)
def test_durations_read_in_days_then_hours(delta, text):
    assert policy.format_duration(delta) == text

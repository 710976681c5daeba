"""The renewal policy as pure functions: the lifetime rule, the spread, backoff, alarms."""

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


HOUR = datetime.timedelta(hours=1)


# lifetime (days), threshold (days); then what the rule makes of it: validity left when due,
# the overdue grace after the due time, validity left below which it is urgent, the cap of
# the spread window.
LIFETIMES = [
    (1, 30, 12 * HOUR, 2.4 * HOUR, 4 * HOUR, 1.2 * HOUR),  # half-life, grace a tenth
    (6, 30, 3 * DAY, 14.4 * HOUR, 1 * DAY, 7.2 * HOUR),  # `shortlived`: half-life
    (45, 30, 22.5 * DAY, 2 * DAY, 7.5 * DAY, 1 * DAY),  # threshold capped at half
    (45, 7, 15 * DAY, 2 * DAY, 7.5 * DAY, 1 * DAY),  # a third left: earlier than 7 days
    (64, 30, 30 * DAY, 2 * DAY, 64 / 6 * DAY, 1 * DAY),  # threshold earlier than a third
    (90, 30, 30 * DAY, 2 * DAY, 15 * DAY, 1 * DAY),
    (90, 7, 30 * DAY, 2 * DAY, 15 * DAY, 1 * DAY),  # never later than a third left
    (1095, 30, 365 * DAY, 2 * DAY, 182.5 * DAY, 1 * DAY),  # 3 years: a third left
]


@pytest.mark.parametrize(
    ("days", "threshold", "due_left", "grace", "urgent_left", "cap"), LIFETIMES
)
def test_the_lifetime_rule(days, threshold, due_left, grace, urgent_left, cap):
    not_before, not_after = cert(days, days)  # issued now
    assert policy.renewal_left(threshold, not_before, not_after) == due_left
    due_at = not_after - due_left
    assert policy.renewal_due_at(threshold, not_before, not_after) == due_at
    assert policy.overdue_grace(not_before, not_after) == grace
    assert policy.spread_window(DAY * 30, not_before, not_after) == cap
    assert policy.spread_window(4 * HOUR, not_before, not_after) == min(4 * HOUR, cap)
    # Never due right after issuance: half the lifetime at least goes by.
    assert due_at - not_before >= (not_after - not_before) / 2
    # The timeline: valid, due (renewal planned), overdue, close to expiry, expired.
    tick = datetime.timedelta(seconds=1)
    state = policy.certificate_state
    assert state(due_at - tick, threshold, not_before, not_after) == policy.STATE_VALID
    assert state(due_at, threshold, not_before, not_after) == policy.STATE_DUE
    assert policy.decide(due_at - tick, threshold, not_before, not_after).action == (
        policy.SKIP_NOT_DUE
    )
    assert policy.decide(due_at, threshold, not_before, not_after).action == policy.RENEW
    assert state(due_at + grace - tick, threshold, not_before, not_after) == policy.STATE_DUE
    assert state(due_at + grace, threshold, not_before, not_after) == policy.STATE_OVERDUE
    assert policy.is_overdue(due_at + grace, threshold, not_before, not_after)
    soon = not_after - urgent_left
    assert state(soon - tick, threshold, not_before, not_after) == policy.STATE_OVERDUE
    assert state(soon + tick, threshold, not_before, not_after) == policy.STATE_EXPIRING
    assert policy.is_urgent(soon + tick, not_before, not_after, attempts=1)
    assert not policy.is_urgent(soon + tick, not_before, not_after, attempts=0)
    assert not policy.is_urgent(soon - tick, not_before, not_after, attempts=5)
    assert state(not_after, threshold, not_before, not_after) == policy.STATE_EXPIRED
    # A planned renewal never looks overdue: the spread ends before the grace does.
    latest = policy.latest_renewal_at(threshold, not_before, not_after, 30 * DAY)
    assert due_at <= latest < due_at + grace


@pytest.mark.parametrize(
    ("days", "left", "state", "urgent"),
    [
        (6, 3, policy.STATE_DUE, False),  # half its life left: renewal planned, all fine
        (6, 4, policy.STATE_VALID, False),
        (90, 3, policy.STATE_EXPIRING, True),  # a thirtieth left: an emergency
        (90, 20, policy.STATE_OVERDUE, False),
        (45, 3, policy.STATE_EXPIRING, True),
    ],
)
def test_three_days_left_is_fine_for_six_days_and_an_emergency_for_ninety(
    days, left, state, urgent
):
    not_before, not_after = cert(days, left)
    assert policy.certificate_state(NOW, 30, not_before, not_after) == state
    assert policy.is_urgent(NOW, not_before, not_after, attempts=2) is urgent
    assert policy.is_overdue(NOW, 30, not_before, not_after) is (
        state != policy.STATE_DUE and state != policy.STATE_VALID
    )


def test_the_spread_is_stable_per_certificate_and_never_past_the_cap():
    not_before, not_after = cert(90, 29)  # due a day ago
    due_at = policy.renewal_due_at(30, not_before, not_after)
    spread = 4 * HOUR
    shares = [policy.jitter(f"h{i}.example.test", "0a1b") for i in range(200)]
    assert all(0 <= s < 1 for s in shares)
    assert policy.jitter("h1.example.test", "0a1b") == shares[1]  # stable across scans
    assert policy.jitter("h1.example.test", "0a1c") != shares[1]  # a new certificate redraws
    planned = [
        policy.planned_renewal_at(30, not_before, not_after, spread=spread, share=s) for s in shares
    ]
    assert all(due_at <= p < due_at + spread for p in planned)
    # Spread over the window, not bunched: each quarter of it gets some.
    quarters = {int((p - due_at) / spread * 4) for p in planned}
    assert quarters == {0, 1, 2, 3}
    # The decision waits for the planned time, then renews; the reason says both times.
    share = shares[0]
    at = policy.planned_renewal_at(30, not_before, not_after, spread=spread, share=share)
    before = policy.decide(at - HOUR / 60, 30, not_before, not_after, spread=spread, share=share)
    assert before.action == policy.SKIP_NOT_DUE and before.planned_at == at
    assert f"renewal planned at {at:%Y-%m-%d %H:%M} UTC" in before.reason
    assert policy.decide(at, 30, not_before, not_after, spread=spread, share=share).action == (
        policy.RENEW
    )
    # Expired or not covering the name: at once, whatever the spread.
    late = policy.decide(NOW, 30, *cert(90, -1), spread=spread, share=0.99)
    assert late.action == policy.RENEW


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


def test_urgent_only_when_close_to_expiry_for_its_lifetime_and_failing():
    assert policy.is_urgent(NOW, *cert(90, 14), attempts=1)  # under a sixth (15 days)
    assert not policy.is_urgent(NOW, *cert(90, 14), attempts=0)
    assert not policy.is_urgent(NOW, *cert(90, 16), attempts=5)
    assert not policy.is_urgent(NOW, *cert(6, 2), attempts=5)  # a third of 6 days left
    assert policy.is_urgent(NOW, *cert(6, 0.9), attempts=1)
    # Lifetime unknown: only an expired certificate is urgent.
    assert policy.is_urgent(NOW, None, NOW, attempts=1)
    assert not policy.is_urgent(NOW, None, NOW + DAY, attempts=1)


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
def test_overdue_two_days_after_the_due_date_of_a_90_day_certificate(left, overdue):
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


@pytest.mark.parametrize("lifetime", [6, 45, 90])
@pytest.mark.parametrize("spread", [datetime.timedelta(0), datetime.timedelta(hours=12)])
@pytest.mark.parametrize("ari_hours", [None, -1, 5, 24 * 200])
def test_not_due_as_planned_says_what_decide_says(lifetime, spread, ari_hours):
    """The scan's shortcut agrees with ``decide``: True exactly when ``decide`` says not due
    with that planned time (a host with no failed attempt, a certificate covering it)."""
    ari_renew_at = None if ari_hours is None else NOW + datetime.timedelta(hours=ari_hours)
    for left in (-1, 0.5, 2, 2.9, 3.1, 5, 14, 22, 23, 29.9, 30.1, 31, 60, 89):
        not_before, not_after = cert(lifetime, left)
        decision = policy.decide(
            NOW,
            30,
            not_before,
            not_after,
            spread=spread,
            share=policy.jitter("a.example.test", "01ab"),
            ari_renew_at=ari_renew_at,
        )
        for recorded in (decision.planned_at, NOW + DAY, NOW - DAY, None):
            shortcut = policy.not_due_as_planned(
                NOW,
                30,
                "a.example.test",
                "01ab",
                not_before,
                not_after,
                planned_at=recorded,
                spread=spread,
                ari_renew_at=ari_renew_at,
            )
            expected = decision.action == policy.SKIP_NOT_DUE and recorded == decision.planned_at
            assert shortcut is expected, (left, recorded, decision)
    # Another host's or certificate's share of the spread is another plan.
    not_before, not_after = cert(90, 60)
    planned = policy.decide(
        NOW, 30, not_before, not_after, spread=DAY, share=policy.jitter("a.example.test", "01ab")
    ).planned_at
    for hostname, serial in (("b.example.test", "01ab"), ("a.example.test", "01ac")):
        assert not policy.not_due_as_planned(
            NOW, 30, hostname, serial, not_before, not_after, planned_at=planned, spread=DAY
        )

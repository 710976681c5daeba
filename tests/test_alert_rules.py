"""The alert emails' rules: which state a host is in, what changed, what is sent."""

from __future__ import annotations

import datetime

import pytest

from modoboa_pro.virtualhosts import alert_rules, constants
from modoboa_pro.virtualhosts.alert_rules import Change, HostFacts, Notified, Problem

pytestmark = pytest.mark.monitoring

NOW = datetime.datetime(2026, 11, 29, 12, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def host(**fields) -> HostFacts:
    values = {
        "id": 1,
        "hostname": "www.example.test",
        "enabled": True,
        "status": constants.STATUS_ACTIVE,
        "attempts": 0,
        "next_attempt_at": None,
        "last_error": "",
        "failed_step": "",
        "not_before": None,
        "not_after": None,
    }
    values.update(fields)
    return HostFacts(**values)


def kind(facts: HostFacts) -> str | None:
    problem = alert_rules.host_problem(NOW, 30, facts)
    return problem.kind if problem else None


@pytest.mark.parametrize(
    ("attempts", "next_in", "expected"),
    [
        (1, datetime.timedelta(minutes=1), None),  # the back-off is still running
        (3, datetime.timedelta(minutes=100), None),
        (4, DAY, alert_rules.KIND_FAILED),  # retries spent for the day
        (1, None, alert_rules.KIND_FAILED),  # no retry planned: an operator must act
    ],
)
def test_a_failure_is_alerted_once_its_retries_are_spent(attempts, next_in, expected):
    facts = host(
        status=constants.STATUS_FAILED,
        attempts=attempts,
        next_attempt_at=NOW + next_in if next_in else None,
    )
    assert kind(facts) == expected


@pytest.mark.parametrize(
    ("lifetime_days", "left", "expected"),
    [
        (90, 40 * DAY, None),  # not due yet
        (90, 29 * DAY, None),  # due a day ago: within the overdue grace (2 days)
        (90, 20 * DAY, alert_rules.KIND_EXPIRING),  # last third and overdue
        (6, 2.5 * DAY, None),  # due at half-life, still within its grace
        (6, 1.5 * DAY, alert_rules.KIND_EXPIRING),
        (90, -DAY, alert_rules.KIND_EXPIRING),  # expired
    ],
)
def test_the_last_third_of_the_lifetime_unrenewed(lifetime_days, left, expected):
    not_after = NOW + left
    facts = host(not_before=not_after - lifetime_days * DAY, not_after=not_after)
    assert kind(facts) == expected


def test_worst_state_first_and_disabled_hosts_are_quiet():
    expiring = {"not_before": NOW - 80 * DAY, "not_after": NOW + 10 * DAY}
    paused = host(status=constants.STATUS_PAUSED, **expiring)
    assert kind(paused) == alert_rules.KIND_PAUSED
    failing = host(status=constants.STATUS_FAILED, attempts=5, next_attempt_at=NOW + DAY)
    assert kind(host(**{**failing.__dict__, **expiring})) == alert_rules.KIND_EXPIRING
    assert kind(host(**{**failing.__dict__, "enabled": False})) is None


def test_changes_tell_each_new_state_once_and_each_recovery():
    failed = Problem("host:1", alert_rules.KIND_FAILED, "a.test", "why")
    worse = Problem("host:1", alert_rules.KIND_PAUSED, "a.test", "why")
    told, forget = alert_rules.changes({"host:1": failed}, {}, set(), set())
    assert [c.kind for c in told] == [alert_rules.KIND_FAILED] and not forget
    same = {"host:1": Notified("a.test", alert_rules.KIND_FAILED)}
    assert alert_rules.changes({"host:1": failed}, same, set(), set()) == ([], set())
    assert [c.kind for c in alert_rules.changes({"host:1": worse}, same, set(), set())[0]] == [
        alert_rules.KIND_PAUSED
    ]
    recovered = alert_rules.changes({}, same, {"host:1"}, set())[0]
    assert [(c.kind, c.before) for c in recovered] == [("recovered", alert_rules.KIND_FAILED)]
    assert alert_rules.changes({}, same, set(), set()) == ([], set())  # retrying: hold
    assert alert_rules.changes({}, same, set(), {"host:1"}) == ([], {"host:1"})


def test_one_email_each_up_to_three_then_one_digest_a_day():
    def found(n: int) -> list[Change]:
        return [Change(f"host:{i}", f"h{i}", None, None) for i in range(n)]

    assert alert_rules.batches(found(3), NOW, NOW) == [[c] for c in found(3)]
    assert alert_rules.batches(found(200), NOW, None) == [found(200)]
    assert alert_rules.batches(found(200), NOW, NOW - 23 * datetime.timedelta(hours=1)) == []
    assert alert_rules.batches(found(200), NOW, NOW - DAY) == [found(200)]

"""The order budget's policy (``budget``): sliding windows, headroom, the ARI exemption."""

from __future__ import annotations

import datetime

import pytest

from modoboa_pro.virtualhosts import budget
from modoboa_pro.virtualhosts.errors import ConfigurationError

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SMALL = budget.Budget(
    orders_per_account=5,
    orders_window=datetime.timedelta(hours=3),
    failed_validations_per_hostname=2,
    failed_window=datetime.timedelta(hours=1),
    headroom_for_new_hosts=2,
)


def ago(**delta: float) -> datetime.datetime:
    return NOW - datetime.timedelta(**delta)


def check(orders=(), failures=(), *, new_host=True, exempt=False, limits=SMALL):
    return budget.check_order(
        NOW,
        limits,
        "www.example.com",
        orders=orders,
        failures=failures,
        new_host=new_host,
        exempt=exempt,
    )


def test_defaults_mirror_lets_encrypt():
    default = budget.from_setting({})
    assert default == budget.Budget(
        orders_per_account=300,
        orders_window=datetime.timedelta(hours=3),
        failed_validations_per_hostname=5,
        failed_window=datetime.timedelta(hours=1),
        headroom_for_new_hosts=30,
    )
    assert budget.from_setting(None) is None  # off
    assert budget.from_setting({"orders_per_account": 10, "orders_window": 60}) == budget.Budget(
        orders_per_account=10, orders_window=datetime.timedelta(minutes=1), headroom_for_new_hosts=1
    )  # the headroom follows the limit unless set: a tenth


@pytest.mark.parametrize(
    "value, says",
    [
        ({"orders": 3}, "unknown key(s) orders"),
        ({"orders_per_account": -1}, "must be a number >= 0"),
        ({"failed_window": "1h"}, "must be a number >= 0"),
        ({"orders_per_account": 10, "headroom_for_new_hosts": 10}, "must be below"),
        ([("orders_per_account", 3)], "must be a dict"),
    ],
)
def test_malformed_settings_say_what_is_wrong(value, says):
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_ORDER_BUDGET") as err:
        budget.from_setting(value)
    assert says in err.value.message


def test_the_order_window_slides():
    # 5 orders in the last 3 hours: the sixth waits until the oldest leaves the window.
    orders = [ago(hours=2, minutes=50), ago(hours=2), ago(hours=1), ago(minutes=30), ago(minutes=1)]
    refusal = check(orders)
    assert refusal is not None
    assert refusal.retry_at == NOW + datetime.timedelta(minutes=10)
    assert refusal.message == (
        "Not ordered: 5 order(s) for this account in the last 3 hours (the CA allows 5); "
        "next possible at 2026-11-29 12:10 UTC."
    )
    # Orders older than the window do not count.
    assert check([ago(hours=3)] + orders[1:]) is None
    assert check(orders[1:]) is None


def test_renewals_leave_the_headroom_to_new_hosts():
    orders = [ago(hours=2), ago(hours=1), ago(minutes=1)]  # 3 of 5: 2 left, both headroom
    assert check(orders, new_host=True) is None
    refusal = check(orders, new_host=False)
    assert refusal is not None
    # Free again once one order leaves the window (3 - 1 < 5 - 2).
    assert refusal.retry_at == NOW + datetime.timedelta(hours=1)
    assert "(the CA allows 5, 2 of them kept for new hosts)" in refusal.message
    assert check(orders[1:], new_host=False) is None


def test_ari_renewals_with_replaces_are_not_held_to_the_order_count():
    orders = [ago(minutes=m) for m in range(1, 6)]
    assert check(orders, new_host=False) is not None
    assert check(orders, new_host=False, exempt=True) is None


def test_failed_validations_per_hostname_slide_over_the_hour():
    failures = [ago(minutes=50), ago(minutes=5)]
    refusal = check(failures=failures)
    assert refusal is not None
    assert refusal.retry_at == NOW + datetime.timedelta(minutes=10)
    assert refusal.message.startswith(
        "Not ordered: 2 failed validation(s) for www.example.com in the last hour "
        "(the CA allows 2); next possible at 2026-11-29 12:10 UTC."
    )
    # An exempt renewal of a name that keeps failing would fail again: not sent either.
    assert check(failures=failures, exempt=True) is not None
    assert check(failures=[ago(minutes=61), ago(minutes=5)]) is None


def test_both_limits_hit_the_later_time_is_given():
    orders = [ago(minutes=m) for m in (170, 100, 90, 20, 1)]  # free at 12:10
    failures = [ago(minutes=40), ago(minutes=30)]  # free at 12:20
    refusal = check(orders, failures)
    assert refusal is not None
    assert refusal.retry_at == NOW + datetime.timedelta(minutes=20)


def test_exemption_needs_the_ari_time_of_this_very_certificate():
    not_after = NOW + datetime.timedelta(days=30)
    assert budget.is_exempt(NOW, "aki.serial", ("aki.serial", ago(hours=1)), not_after)
    # Not yet the time the CA's window gave, another certificate's answer, no ARI at all.
    assert not budget.is_exempt(
        NOW, "aki.serial", ("aki.serial", NOW + datetime.timedelta(hours=1)), not_after
    )
    assert not budget.is_exempt(NOW, "aki.serial", ("aki.other", ago(hours=1)), not_after)
    assert not budget.is_exempt(NOW, "aki.serial", ("", None), not_after)
    assert not budget.is_exempt(NOW, "", ("", ago(hours=1)), not_after)


@pytest.mark.django_db
def test_the_system_check_names_a_malformed_budget(settings):
    from modoboa_pro.virtualhosts.checks import check_virtualhosts

    settings.VIRTUALHOSTS_ORDER_BUDGET = {"orders_per_hour": 10}
    [error] = [m for m in check_virtualhosts() if m.id == "virtualhosts.E013"]
    assert "unknown key(s) orders_per_hour" in error.msg
    for fine in ({}, None, {"orders_per_account": 50}):
        settings.VIRTUALHOSTS_ORDER_BUDGET = fine
        assert not [m for m in check_virtualhosts() if m.id == "virtualhosts.E013"]


@pytest.mark.django_db
def test_the_ledger_counts_this_accounts_counted_orders_and_forgets_old_ones():
    from modoboa_pro.virtualhosts import order_ledger
    from modoboa_pro.virtualhosts.models import BudgetEntry

    ca, other_ca = "https://ca.example.test/dir", "https://other.example.test/dir"

    def record(when, kind=budget.KIND_ORDER, *, url=ca, hostname="a.example.com", exempt=False):
        order_ledger.record(when, SMALL, url, hostname, kind, exempt=exempt)

    def verdict(hostname="a.example.com", *, new_host=True):
        return order_ledger.check(NOW, SMALL, ca, hostname, new_host=new_host, exempt=False)

    record(ago(hours=5))  # outside every window: dropped by the next record
    for minutes in (50, 40, 30):
        record(ago(minutes=minutes))
    record(ago(minutes=20), exempt=True)  # an ARI renewal
    record(ago(minutes=10), url=other_ca)  # another account
    assert BudgetEntry.objects.count() == 5
    assert verdict() is None  # 3 counted of 5
    refusal = verdict(new_host=False)  # 3 of the 3 renewals may use
    assert refusal is not None and refusal.retry_at == ago(minutes=50) + SMALL.orders_window

    record(ago(minutes=15), budget.KIND_FAILED_VALIDATION)
    record(ago(minutes=5), budget.KIND_FAILED_VALIDATION)
    refusal = verdict()
    assert refusal is not None and "2 failed validation(s) for a.example.com" in refusal.message
    assert verdict("b.example.com") is None  # per hostname

"""Pure policy: the order budget that mirrors the CA's rate limits.

The plugin never sends the order that would exceed one of the CA's documented limits
(new orders per account, failed validations per hostname, each over a sliding window):
a refused order costs nothing, an order over the limit costs a failure and a wait at
the CA. Renewals keep ``headroom_for_new_hosts`` orders free, so that a burst of renewals
never delays a host an admin just created. ARI renewals sending ``replaces`` are exempt
from the order count, as at the CA. The ledger of what was sent is ``order_ledger``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ConfigurationError

# Let's Encrypt's published limits (late 2026): 300 new orders per account per 3 hours,
# 5 failed validations per hostname (per account) per hour.
ORDERS_PER_ACCOUNT = 300
ORDERS_WINDOW = datetime.timedelta(hours=3)
FAILED_VALIDATIONS_PER_HOSTNAME = 5
FAILED_WINDOW = datetime.timedelta(hours=1)
# Orders renewals leave free for hosts without a certificate yet, unless set: a tenth of
# the order limit (30 of 300). An admin who adds a host waits seconds, not the end of a
# renewal burst.
HEADROOM_SHARE = 1 / 10
HEADROOM_FOR_NEW_HOSTS = int(ORDERS_PER_ACCOUNT * HEADROOM_SHARE)

# The keys of VIRTUALHOSTS_ORDER_BUDGET (durations in seconds).
SETTING_KEYS = (
    "orders_per_account",
    "orders_window",
    "failed_validations_per_hostname",
    "failed_window",
    "headroom_for_new_hosts",
)

# What a ledger entry records.
KIND_ORDER = "order"
KIND_FAILED_VALIDATION = "failed_validation"


@dataclass(frozen=True)
class Budget:
    """The limits the plugin keeps to (``VIRTUALHOSTS_ORDER_BUDGET``)."""

    orders_per_account: int = ORDERS_PER_ACCOUNT
    orders_window: datetime.timedelta = ORDERS_WINDOW
    failed_validations_per_hostname: int = FAILED_VALIDATIONS_PER_HOSTNAME
    failed_window: datetime.timedelta = FAILED_WINDOW
    headroom_for_new_hosts: int = HEADROOM_FOR_NEW_HOSTS

    @property
    def longest_window(self) -> datetime.timedelta:
        """How long the ledger must remember an entry."""
        return max(self.orders_window, self.failed_window)


def from_setting(value: Mapping[str, object] | None) -> Budget | None:
    """The budget of ``VIRTUALHOSTS_ORDER_BUDGET``: keys given override Let's Encrypt's
    figures; None turns the budget off (a private CA without limits)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"VIRTUALHOSTS_ORDER_BUDGET must be a dict (keys: {', '.join(SETTING_KEYS)}) or "
            f"None, not {value!r}."
        )
    unknown = sorted(set(value) - set(SETTING_KEYS))
    if unknown:
        raise ConfigurationError(
            f"VIRTUALHOSTS_ORDER_BUDGET has unknown key(s) {', '.join(map(str, unknown))}; "
            f"the keys are {', '.join(SETTING_KEYS)}."
        )
    numbers: dict[str, int] = {}
    for key in SETTING_KEYS:
        raw = value.get(key)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
            raise ConfigurationError(
                f"VIRTUALHOSTS_ORDER_BUDGET[{key!r}] must be a number >= 0, not {raw!r}."
            )
        numbers[key] = int(raw)
    default = Budget()
    orders = numbers.get("orders_per_account", default.orders_per_account)
    budget = Budget(
        orders_per_account=orders,
        orders_window=_seconds(numbers.get("orders_window"), default.orders_window),
        failed_validations_per_hostname=numbers.get(
            "failed_validations_per_hostname", default.failed_validations_per_hostname
        ),
        failed_window=_seconds(numbers.get("failed_window"), default.failed_window),
        headroom_for_new_hosts=numbers.get("headroom_for_new_hosts", int(orders * HEADROOM_SHARE)),
    )
    if budget.headroom_for_new_hosts >= budget.orders_per_account:
        raise ConfigurationError(
            "VIRTUALHOSTS_ORDER_BUDGET: headroom_for_new_hosts "
            f"({budget.headroom_for_new_hosts}) must be below orders_per_account "
            f"({budget.orders_per_account}), or no renewal could ever be ordered."
        )
    return budget


def _seconds(value: int | None, default: datetime.timedelta) -> datetime.timedelta:
    return default if value is None else datetime.timedelta(seconds=value)


def next_free_at(
    now: datetime.datetime,
    times: Iterable[datetime.datetime],
    limit: int,
    window: datetime.timedelta,
) -> tuple[int, datetime.datetime | None]:
    """How many of ``times`` fall in the sliding ``window`` before ``now``, and when one
    more is allowed: None while fewer than ``limit``, else once enough have left it."""
    recent = sorted(t for t in times if t > now - window)
    if len(recent) < limit:
        return len(recent), None
    if limit <= 0:  # nothing is ever allowed: wait a whole window after the newest
        return len(recent), (recent[-1] if recent else now) + window
    return len(recent), recent[len(recent) - limit] + window


@dataclass(frozen=True)
class Refusal:
    """Why an order is not sent, and when it can be."""

    message: str
    retry_at: datetime.datetime


def check_order(
    now: datetime.datetime,
    budget: Budget,
    hostname: str,
    *,
    orders: Iterable[datetime.datetime],
    failures: Iterable[datetime.datetime],
    new_host: bool,
    exempt: bool,
) -> Refusal | None:
    """May an order for ``hostname`` be sent now? None if so, else the refusal.

    ``orders``: when the account's counted orders were sent; ``failures``: when this
    hostname's validations failed. A renewal (``new_host`` False) leaves the headroom free;
    ``exempt`` (an ARI renewal sending ``replaces``) is not held to the order count, but a
    name whose validations keep failing is not ordered for anyway: it would fail again.
    """
    refusals: list[Refusal] = []
    failed, failed_free_at = next_free_at(
        now, failures, budget.failed_validations_per_hostname, budget.failed_window
    )
    if failed_free_at is not None:
        refusals.append(
            Refusal(
                f"Not ordered: {failed} failed validation(s) for {hostname} in the last "
                f"{_window(budget.failed_window)} (the CA allows "
                f"{budget.failed_validations_per_hostname}); next possible at "
                f"{failed_free_at:%Y-%m-%d %H:%M} UTC. Check that {hostname} resolves to this "
                "server and that port 80 is reachable meanwhile.",
                failed_free_at,
            )
        )
    if not exempt:
        limit = budget.orders_per_account
        kept = "" if new_host else f", {budget.headroom_for_new_hosts} of them kept for new hosts"
        if not new_host:
            limit -= budget.headroom_for_new_hosts
        sent, orders_free_at = next_free_at(now, orders, limit, budget.orders_window)
        if orders_free_at is not None:
            refusals.append(
                Refusal(
                    f"Not ordered: {sent} order(s) for this account in the last "
                    f"{_window(budget.orders_window)} (the CA allows "
                    f"{budget.orders_per_account}{kept}); next possible at "
                    f"{orders_free_at:%Y-%m-%d %H:%M} UTC.",
                    orders_free_at,
                )
            )
    if not refusals:
        return None
    return max(refusals, key=lambda refusal: refusal.retry_at)


def is_exempt(
    now: datetime.datetime,
    cert_ari_id: str,
    ari: tuple[str, datetime.datetime | None],
    not_after: datetime.datetime,
) -> bool:
    """An ARI renewal: the order sends ``replaces`` for this certificate, and the time
    chosen in the CA's renewal window (``ari``: stored id and time) has come, before
    expiry. Let's Encrypt exempts such orders from its limits."""
    ari_id, renew_at = ari
    return (
        bool(cert_ari_id)
        and cert_ari_id == ari_id
        and renew_at is not None
        and (renew_at <= now < not_after)
    )


def _window(window: datetime.timedelta) -> str:
    """ "3 hours", "hour", "90 minutes": the window in words."""
    seconds = int(window.total_seconds())
    if seconds == 3600:
        return "hour"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"

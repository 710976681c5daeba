"""Pure policy: when a certificate is due, when to retry after a failure."""

from __future__ import annotations

import datetime

# Let's Encrypt's advice for retries: back off 1 min, 10 min, 100 min, then daily.
RETRY_BACKOFF = (
    datetime.timedelta(minutes=1),
    datetime.timedelta(minutes=10),
    datetime.timedelta(minutes=100),
)
RETRY_CEILING = datetime.timedelta(days=1)

# Never renew later than half-way through a certificate's life: with 6-day
# (and soon 45-day) certificates a fixed 30-day threshold would renew on every
# scan and hit the CA's duplicate-certificate limit (5 per week).
MAX_THRESHOLD_LIFETIME_RATIO = 0.5

# An Alarm is raised when a certificate this close to expiry still fails to renew.
URGENT_EXPIRY = datetime.timedelta(days=7)


def retry_delay(attempts: int) -> datetime.timedelta:
    """Delay before retry number ``attempts`` (1 = first failure)."""
    if attempts < 1:
        return datetime.timedelta(0)
    if attempts <= len(RETRY_BACKOFF):
        return RETRY_BACKOFF[attempts - 1]
    return RETRY_CEILING


def next_attempt(
    now: datetime.datetime, attempts: int, retry_after: datetime.datetime | None = None
) -> datetime.datetime:
    """When to try again: the backoff, or later if the CA said so."""
    planned = now + retry_delay(attempts)
    if retry_after is not None and retry_after > planned:
        return retry_after
    return planned


def effective_threshold(
    threshold_days: int, not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.timedelta:
    """The renewal threshold, capped at half the certificate's lifetime."""
    lifetime = not_after - not_before
    return min(datetime.timedelta(days=threshold_days), lifetime * MAX_THRESHOLD_LIFETIME_RATIO)


def renewal_due_at(
    threshold_days: int, not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.datetime:
    """The moment from which the certificate is due for renewal."""
    return not_after - effective_threshold(threshold_days, not_before, not_after)


def is_due(
    now: datetime.datetime,
    threshold_days: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bool:
    """True when the remaining validity is below the (capped) threshold."""
    return now >= renewal_due_at(threshold_days, not_before, not_after)

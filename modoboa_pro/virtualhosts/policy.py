"""Pure policy: when a certificate is due, when to retry, when to alarm.

The one renewal decision (``decide``) is shared by the daily scan, its dry run
and the pipeline's "why order now"; the retry backoff table is ``RETRY_BACKOFF``.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a plain dataclass read, no I/O: policy stays pure
    from .adapters.storage import StoredCertificate

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

# The daily scan renews a certificate on the day it becomes due; a failed
# renewal is retried within the day (1, 10, 100 minutes, then daily). A
# certificate still not renewed this long after it became due means renewals
# are not happening (scheduler stopped, host stuck): monitoring must alert.
OVERDUE_GRACE = datetime.timedelta(days=2)


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


# -- the daily scan ----------------------------------------------------------

# The scan is scheduled daily: more than a day and a bit (a slow scan, a
# scheduler restarted late) without one means nothing is renewing certificates.
SCAN_STALE_AFTER = datetime.timedelta(hours=26)

# A host still without a certificate this long after its last change is
# reported as stuck: a provisioning run takes seconds to minutes.
PROVISIONING_STUCK_AFTER = datetime.timedelta(hours=1)
# The retry sweep re-runs a pending or provisioning host this long after its last
# change when no live run holds it (no queued job, no job of a live worker, no lock
# of a live process): a run killed with its worker is taken up again within minutes.
# Hosts waiting in a long queue are busy, so they are never run twice.
ORPHANED_RUN_AFTER = datetime.timedelta(minutes=3)

# Where a planned renewal time comes from: the CA's ARI window, or the lifetime rule.
SOURCE_ARI = "ari"
SOURCE_LIFETIME = "lifetime"


def ari_renewal_time(
    now: datetime.datetime,
    start: datetime.datetime,
    end: datetime.datetime,
    rng: random.Random | None = None,
) -> datetime.datetime:
    """A uniformly random time inside the CA's window (RFC 9773 4.2), so that hosts sharing a
    window do not all renew at once; ``now`` once the window has started: the CA asks for
    the renewal already."""
    if start <= now:
        return now
    span = (end - start).total_seconds()
    return start + datetime.timedelta(seconds=(rng or random).uniform(0, span))


def planned_renewal(
    threshold_days: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    ari_renew_at: datetime.datetime | None = None,
) -> tuple[datetime.datetime, str]:
    """When the certificate is to be renewed, and by which rule (``SOURCE_*``): the time
    chosen in the CA's ARI window first, else the lifetime rule. A time at or after
    expiry is no renewal plan (a window past expiry is a CA's mistake): the lifetime rule."""
    if ari_renew_at is not None and ari_renew_at < not_after:
        return ari_renew_at, SOURCE_ARI
    return renewal_due_at(threshold_days, not_before, not_after), SOURCE_LIFETIME


# The actions of a decision.
RENEW = "renew"
SKIP_NOT_DUE = "not_due"
SKIP_BACKOFF = "backoff"
NO_CERTIFICATE = "no_certificate"  # the scan skips it (provisioning's job); a run orders one


@dataclass(frozen=True)
class Decision:
    """What to do with one host's certificate, and why (in words)."""

    action: str  # RENEW, SKIP_NOT_DUE, SKIP_BACKOFF or NO_CERTIFICATE
    reason: str
    due_at: datetime.datetime | None = None
    source: str = SOURCE_LIFETIME  # what set ``due_at``: SOURCE_ARI or SOURCE_LIFETIME


def decide(
    now: datetime.datetime,
    threshold_days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    *,
    covers_hostname: bool = True,
    problem: str | None = None,
    attempts: int = 0,
    next_attempt_at: datetime.datetime | None = None,
    ari_renew_at: datetime.datetime | None = None,
) -> Decision:
    """Renew when the certificate does not cover the name, has expired or is due, or when
    its file is unusable (``problem``), unless a failed host is backing off.

    Due means: at the renewal time chosen in the CA's ARI window (``ari_renew_at``, for
    this certificate), else by the lifetime rule (``renewal_due_at``).

    A failed renewal is retried when its backoff says so, not on every scan:
    each failed order counts against the CA's rate limits. A run that is itself
    the retry passes no ``attempts``.
    """
    due_at = None
    source = SOURCE_LIFETIME
    if problem is not None:
        reason = problem  # a new order replaces the unusable file
    elif not_before is None or not_after is None:
        return Decision(NO_CERTIFICATE, "no certificate yet")
    else:
        due_at, source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
        by = " (the CA's renewal window)" if source == SOURCE_ARI else ""
        if not covers_hostname:
            reason = "the certificate does not cover the hostname"
        elif not_after <= now:
            reason = f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
        elif now >= due_at:
            left = format_duration(not_after - now)
            reason = f"{left} left, due since {due_at:%Y-%m-%d %H:%M} UTC{by}"
        else:
            return Decision(
                SKIP_NOT_DUE, f"not due until {due_at:%Y-%m-%d %H:%M} UTC{by}", due_at, source
            )
    if in_backoff(now, attempts, next_attempt_at):
        assert next_attempt_at is not None
        return Decision(
            SKIP_BACKOFF,
            f"{reason}; last renewal failed ({attempts} attempt(s)), "
            f"next try after {next_attempt_at:%Y-%m-%d %H:%M} UTC",
            due_at,
            source,
        )
    return Decision(RENEW, reason, due_at, source)


def decide_stored(
    now: datetime.datetime,
    threshold_days: int,
    hostname: str,
    stored: StoredCertificate,
    *,
    attempts: int = 0,
    next_attempt_at: datetime.datetime | None = None,
    ari: tuple[str, datetime.datetime | None] = ("", None),
) -> Decision:
    """``decide`` for the certificate read from a host's files (``storage.read_current``);
    ``ari``: the certificate id and renewal time stored from the CA's ARI answer, used
    only while they belong to this very certificate."""
    facts = stored.facts
    ari_id, ari_renew_at = ari
    if facts is None or not ari_id or facts.ari_id != ari_id:
        ari_renew_at = None
    return decide(
        now,
        threshold_days,
        facts.not_before if facts else None,
        facts.not_after if facts else None,
        covers_hostname=facts is None or hostname in facts.names,
        problem=stored.problem,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        ari_renew_at=ari_renew_at,
    )


def expired_problem(
    now: datetime.datetime, not_after: datetime.datetime, where: object
) -> str | None:
    """An expired certificate file (``where``), in words for the operator; None while valid."""
    if not_after > now:
        return None
    return (
        f"certificate expired: {where} expired on {not_after:%Y-%m-%d %H:%M} UTC, and "
        "browsers refuse it"
    )


def in_backoff(
    now: datetime.datetime, attempts: int, next_attempt_at: datetime.datetime | None
) -> bool:
    """True while a failed host waits for its planned retry time."""
    return attempts > 0 and next_attempt_at is not None and next_attempt_at > now


def is_urgent(now: datetime.datetime, not_after: datetime.datetime, attempts: int) -> bool:
    """A certificate close to expiry whose renewal fails: a human must look now."""
    return attempts > 0 and not_after - now <= URGENT_EXPIRY


def is_scan_stale(
    now: datetime.datetime,
    last_run: datetime.datetime | None,
    hosts_with_certificates: int,
    certificates_since: datetime.datetime | None = None,
) -> bool:
    """True when certificates exist but the scan has not run recently enough.

    Before the first scan ever, the clock starts when the first host with a
    certificate was created: a fresh install is not stale before its first night.
    """
    if hosts_with_certificates <= 0:
        return False
    reference = last_run or certificates_since
    return reference is None or now - reference > SCAN_STALE_AFTER


def is_overdue(
    now: datetime.datetime,
    threshold_days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    ari_renew_at: datetime.datetime | None = None,
) -> bool:
    """Expired, or due for renewal for longer than ``OVERDUE_GRACE``: renewals are not happening.

    Due by the planned time (``planned_renewal``): a host waiting for the time chosen in
    its CA's ARI window is not overdue."""
    if not_after is None:
        return False
    if not_after <= now:
        return True
    if not_before is None:
        return False
    due_at, _source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
    return now >= due_at + OVERDUE_GRACE


def format_duration(delta: datetime.timedelta) -> str:
    """ "N day(s)" from a day up, else "N hour(s)" (never negative)."""
    if delta >= datetime.timedelta(days=1):
        return f"{delta.days} day(s)"
    return f"{max(int(delta.total_seconds() // 3600), 0)} hour(s)"

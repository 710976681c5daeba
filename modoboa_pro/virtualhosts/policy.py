"""Pure policy: when a certificate is due, when to retry, when to alarm.

The one renewal decision (``decide``) is shared by the daily scan, its dry run
and the pipeline's "why order now"; it plans each renewal by the lifetime rule
(``renewal_due_at``) plus the host's share of the spread (``planned_renewal_at``).
The retry backoff table is ``RETRY_BACKOFF``.
"""

from __future__ import annotations

import datetime
import hashlib
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


# A host failing this long in a row (its name no longer points here, port 80 closed for
# good) is paused instead of retried daily: each retry spends a failed validation at the CA,
# which itself pauses the account for the name after enough of them. The operator's
# ``VIRTUALHOSTS_PAUSE_AFTER_DAYS`` overrides it.
PAUSE_AFTER = datetime.timedelta(days=7)


def should_pause(
    now: datetime.datetime,
    failing_since: datetime.datetime | None,
    pause_after: datetime.timedelta | None = PAUSE_AFTER,
) -> bool:
    """True once the streak of failures that began at ``failing_since`` has lasted
    ``pause_after`` (None: never pause)."""
    if pause_after is None or failing_since is None:
        return False
    return now - failing_since >= pause_after


# -- the lifetime rule (the fallback when the CA suggests no renewal time) -------------

# Renew when a third of the certificate's lifetime is left (certmagic's rule): 30 days
# of a 90-day certificate, 15 of a 45-day one, leaving two thirds of the time left for
# retries. Short-lived certificates (6 days) renew at half-life: a third (2 days) leaves
# too little room for a CA outage over a weekend.
RENEW_AT_LIFETIME_LEFT = 1 / 3
SHORT_LIFETIME = datetime.timedelta(days=10)
RENEW_AT_LIFETIME_LEFT_SHORT = 1 / 2

# The operator's threshold (days before expiry) makes a renewal earlier, never later,
# but is capped at half the lifetime: with 6-day (and 45-day) certificates a fixed 30-day
# threshold would renew on every scan and hit the CA's duplicate-certificate limit.
MAX_THRESHOLD_LIFETIME_RATIO = 0.5

# Less than this share of its lifetime left: close to expiry (the health line's error), and
# with renewals failing, the urgent alarm: a human must look now. A sixth is 15 days of a
# 90-day certificate and 1 day of a 6-day one.
URGENT_LIFETIME_LEFT = 1 / 6

# The daily scan (and the retry sweep, every few minutes) renews a certificate once it is
# due; a failed renewal is retried within the day (1, 10, 100 minutes, then daily). Still
# not renewed this long after it became due, renewals are not happening (scheduler
# stopped, host stuck): monitoring must alert. A tenth of the lifetime (14 hours of a
# 6-day certificate), at most 2 days.
OVERDUE_GRACE = datetime.timedelta(days=2)
OVERDUE_GRACE_LIFETIME_RATIO = 1 / 10

# Renewals due by the lifetime rule are spread over ``VIRTUALHOSTS_RENEWAL_SPREAD``
# after their due time (so that hundreds of hosts do not all order at the daily scan),
# but over at most this share of the overdue grace: a planned renewal never looks overdue.
MAX_SPREAD_GRACE_RATIO = 0.5


def lifetime(not_before: datetime.datetime, not_after: datetime.datetime) -> datetime.timedelta:
    """The certificate's total validity (never negative)."""
    return max(not_after - not_before, datetime.timedelta(0))


def renewal_left(
    threshold_days: int, not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.timedelta:
    """How much validity is left when the lifetime rule makes the certificate due.

    The larger (earlier) of the lifetime share and the operator's threshold, the
    latter capped at half the lifetime.
    """
    total = lifetime(not_before, not_after)
    share = RENEW_AT_LIFETIME_LEFT_SHORT if total < SHORT_LIFETIME else RENEW_AT_LIFETIME_LEFT
    threshold = min(datetime.timedelta(days=threshold_days), total * MAX_THRESHOLD_LIFETIME_RATIO)
    return max(total * share, threshold)


def renewal_due_at(
    threshold_days: int, not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.datetime:
    """The lifetime rule: the moment from which the certificate is due for renewal.

    The fallback of the renewal decision when no CA-suggested time (ARI) is known.
    """
    return not_after - renewal_left(threshold_days, not_before, not_after)


def overdue_grace(
    not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.timedelta:
    """How long after its due time a certificate not renewed counts as overdue."""
    return min(OVERDUE_GRACE, lifetime(not_before, not_after) * OVERDUE_GRACE_LIFETIME_RATIO)


def spread_window(
    spread: datetime.timedelta, not_before: datetime.datetime, not_after: datetime.datetime
) -> datetime.timedelta:
    """The window after the due time a renewal is planned in: ``spread``, capped."""
    cap = overdue_grace(not_before, not_after) * MAX_SPREAD_GRACE_RATIO
    return max(min(spread, cap), datetime.timedelta(0))


def jitter(hostname: str, serial: str) -> float:
    """A stable pseudo-random share in [0, 1) for one certificate of one host.

    A hash, not a stored random: every scan, the retry sweep and the renewal run
    compute the same planned time without writing anything; a new certificate (new
    serial) draws anew.
    """
    digest = hashlib.sha256(f"{hostname}/{serial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def planned_renewal_at(
    threshold_days: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    spread: datetime.timedelta = datetime.timedelta(0),
    share: float = 0.0,
) -> datetime.datetime:
    """When the renewal is planned: the due time plus ``share`` (a ``jitter``) of the
    spread window. Never later than ``latest_renewal_at``."""
    window = spread_window(spread, not_before, not_after)
    return _spread_out(renewal_due_at(threshold_days, not_before, not_after), window, share)


def _spread_out(
    due_at: datetime.datetime, window: datetime.timedelta, share: float
) -> datetime.datetime:
    """``due_at`` later by ``share`` of the spread ``window``."""
    return due_at + window * min(max(share, 0.0), 1.0)


def latest_renewal_at(
    threshold_days: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    spread: datetime.timedelta,
) -> datetime.datetime:
    """The cap of the planned time: the due time plus the whole (capped) spread window."""
    return renewal_due_at(threshold_days, not_before, not_after) + spread_window(
        spread, not_before, not_after
    )


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
    """When the certificate is due for renewal, and by which rule (``SOURCE_*``): the time
    chosen in the CA's ARI window first, else the lifetime rule. A time at or after
    expiry is no renewal plan (a window past expiry is a CA's mistake): the lifetime rule."""
    if ari_renew_at is not None and ari_renew_at < not_after:
        return ari_renew_at, SOURCE_ARI
    return renewal_due_at(threshold_days, not_before, not_after), SOURCE_LIFETIME


def is_due(
    now: datetime.datetime,
    threshold_days: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    ari_renew_at: datetime.datetime | None = None,
) -> bool:
    """True once the certificate is due (the ARI time, else the lifetime rule; spread aside)."""
    due_at, _source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
    return now >= due_at


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
    # When the renewal is planned: ``due_at`` plus the host's share of the spread (by the
    # lifetime rule), ``due_at`` itself (by ARI: the CA's window spreads renewals already).
    planned_at: datetime.datetime | None = None
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
    spread: datetime.timedelta = datetime.timedelta(0),
    share: float = 0.0,
    ari_renew_at: datetime.datetime | None = None,
) -> Decision:
    """Renew when the certificate does not cover the name, has expired or its planned
    renewal time has come, or when its file is unusable (``problem``), unless a failed
    host is backing off.

    Due means: at the renewal time chosen in the CA's ARI window (``ari_renew_at``, for
    this certificate), else by the lifetime rule, whose due time is planned later by
    ``share`` of the ``spread`` (``planned_renewal_at``); the other reasons renew at once.
    A failed renewal is retried when its backoff says so, not on every scan: each failed
    order counts against the CA's rate limits. A run that is itself the retry passes no
    ``attempts``.
    """
    due_at = planned_at = None
    source = SOURCE_LIFETIME
    if problem is not None:
        reason = problem  # a new order replaces the unusable file
    elif not_before is None or not_after is None:
        return Decision(NO_CERTIFICATE, "no certificate yet")
    else:
        due_at, source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
        if source == SOURCE_ARI:
            planned_at = due_at
        else:
            planned_at = planned_renewal_at(
                threshold_days, not_before, not_after, spread=spread, share=share
            )
        by = " (the CA's renewal window)" if source == SOURCE_ARI else ""
        if not covers_hostname:
            reason = "the certificate does not cover the hostname"
        elif not_after <= now:
            reason = f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
        elif now >= planned_at:
            left = format_duration(not_after - now)
            reason = f"{left} left, due since {due_at:%Y-%m-%d %H:%M} UTC{by}"
        elif now >= due_at:
            return Decision(
                SKIP_NOT_DUE,
                f"due since {due_at:%Y-%m-%d %H:%M} UTC, renewal planned at "
                f"{planned_at:%Y-%m-%d %H:%M} UTC (renewals are spread out)",
                due_at,
                planned_at,
                source,
            )
        else:
            return Decision(
                SKIP_NOT_DUE,
                f"not due until {due_at:%Y-%m-%d %H:%M} UTC{by}",
                due_at,
                planned_at,
                source,
            )
    if in_backoff(now, attempts, next_attempt_at):
        assert next_attempt_at is not None
        return Decision(
            SKIP_BACKOFF,
            f"{reason}; last renewal failed ({attempts} attempt(s)), "
            f"next try after {next_attempt_at:%Y-%m-%d %H:%M} UTC",
            due_at,
            planned_at,
            source,
        )
    return Decision(RENEW, reason, due_at, planned_at, source)


def decide_stored(
    now: datetime.datetime,
    threshold_days: int,
    hostname: str,
    stored: StoredCertificate,
    *,
    attempts: int = 0,
    next_attempt_at: datetime.datetime | None = None,
    spread: datetime.timedelta = datetime.timedelta(0),
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
        spread=spread,
        share=jitter(hostname, facts.serial) if facts else 0.0,
        ari_renew_at=ari_renew_at,
    )


def not_due_as_planned(
    now: datetime.datetime,
    threshold_days: int,
    hostname: str,
    serial: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    planned_at: datetime.datetime | None,
    spread: datetime.timedelta = datetime.timedelta(0),
    ari_renew_at: datetime.datetime | None = None,
) -> bool:
    """True when a certificate covering ``hostname``, whose host has no failed attempt, is
    not due and ``planned_at`` (its recorded plan) is its planned renewal time: ``decide``
    says ``SKIP_NOT_DUE`` with this ``planned_at``, and nothing is to be recorded. The
    scan's shortcut for the usual host; False sends it through ``decide``.

    ``ari_renew_at``: the stored ARI time, only when it is this certificate's.
    """
    if planned_at is None or now >= planned_at or not_after <= now:
        return False
    due_at, source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
    if source != SOURCE_ARI and spread:  # ``planned_renewal_at``, its due time known
        window = spread_window(spread, not_before, not_after)
        if window:  # a share of nothing is nothing: no hash to compute
            due_at = _spread_out(due_at, window, jitter(hostname, serial))
    return planned_at == due_at


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


def expires_soon(
    now: datetime.datetime, not_before: datetime.datetime, not_after: datetime.datetime
) -> bool:
    """Less than ``URGENT_LIFETIME_LEFT`` of the lifetime left (or expired)."""
    return not_after - now < lifetime(not_before, not_after) * URGENT_LIFETIME_LEFT


def is_urgent(
    now: datetime.datetime,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime,
    attempts: int,
) -> bool:
    """A certificate close to expiry, relative to its lifetime, whose renewal fails: a human
    must look now (a 90-day certificate with 3 days left, not a 6-day one)."""
    if attempts <= 0:
        return False
    if not_before is None:  # lifetime unknown: only an expired certificate is urgent
        return not_after <= now
    return expires_soon(now, not_before, not_after)


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
    """Expired, or due for renewal for longer than its ``overdue_grace``: renewals are not
    happening. Due by the planned time (``planned_renewal``): a host waiting for the time
    chosen in its CA's ARI window is not overdue."""
    if not_after is None:
        return False
    if not_after <= now:
        return True
    if not_before is None:
        return False
    due_at, _source = planned_renewal(threshold_days, not_before, not_after, ari_renew_at)
    return now >= due_at + overdue_grace(not_before, not_after)


# What an operator reads about a certificate, mildest first (the API's ``state``, the
# CLI's and the page's colours).
STATE_VALID = "valid"  # not due yet
STATE_DUE = "due"  # due, its renewal planned
STATE_OVERDUE = "overdue"  # due for too long: renewals are not happening
STATE_EXPIRING = "expiring"  # less than a sixth of its lifetime left
STATE_EXPIRED = "expired"


def certificate_state(
    now: datetime.datetime,
    threshold_days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    ari_renew_at: datetime.datetime | None = None,
) -> str | None:
    """The certificate's state relative to its own lifetime (None without a certificate)."""
    if not_after is None:
        return None
    if not_after <= now:
        return STATE_EXPIRED
    if not_before is None:
        return STATE_VALID
    if expires_soon(now, not_before, not_after):
        return STATE_EXPIRING
    if is_overdue(now, threshold_days, not_before, not_after, ari_renew_at):
        return STATE_OVERDUE
    if is_due(now, threshold_days, not_before, not_after, ari_renew_at):
        return STATE_DUE
    return STATE_VALID


def format_duration(delta: datetime.timedelta) -> str:
    """"N day(s)" from a day up, else "N hour(s)" (never negative)."""
    if delta >= datetime.timedelta(days=1):
        return f"{delta.days} day(s)"
    return f"{max(int(delta.total_seconds() // 3600), 0)} hour(s)"

"""Pure policy of the alert emails: what is a problem, what changed, what to send.

A subject (a host, or the renewal scan) has at most one problem at a time, the worst:
paused, then a certificate close to expiry, then a failure whose retries are exhausted
for the day. An email goes out when a subject's problem changes (a new one, a worse or
milder one, or none any more: the recovery), never again for the same problem.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from . import constants, policy

KIND_PAUSED = "paused"
KIND_EXPIRING = "expiring"
KIND_FAILED = "failed"
KIND_SCAN_STALE = "scan_stale"
KIND_RECOVERED = "recovered"  # what a change to "no problem" is called in the emails

SCAN_KEY = "scan"

# A certificate with less than this share of its lifetime left should have been renewed
# (the lifetime rule renews at a third, at half under 10 days): past it, and overdue by
# ``policy.certificate_state`` (due for longer than the overdue grace, so a renewal
# merely planned by the spread or waiting for the CA's ARI window is no alarm), a human
# must look. 28 days left of a 90-day certificate, 2 of a 6-day one.
ALERT_LIFETIME_LEFT = 1 / 3
ALARMING_STATES = frozenset({policy.STATE_OVERDUE, policy.STATE_EXPIRING, policy.STATE_EXPIRED})

# Up to this many changes in one check are sent one email each; more make one digest.
MAX_SEPARATE_EMAILS = 3
# At most one digest in this period: 200 hosts failing together make one email, and a
# second wave the same day waits for the next digest (the Alarms page and the metrics
# show it meanwhile).
DIGEST_EVERY = datetime.timedelta(days=1)


def host_key(host_id: int) -> str:
    return f"host:{host_id}"


@dataclass(frozen=True)
class HostFacts:
    """What the rules read of a host (plain values: the rules stay pure)."""

    id: int
    hostname: str
    enabled: bool
    status: str
    attempts: int
    next_attempt_at: datetime.datetime | None
    last_error: str
    failed_step: str
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    ari_renew_at: datetime.datetime | None = None


@dataclass(frozen=True)
class Problem:
    key: str
    kind: str
    subject: str  # the hostname, or "the renewal scan"
    reason: str  # the operator-facing reason (the host's last error, the scan's staleness)
    not_after: datetime.datetime | None = None


def retries_exhausted(attempts: int, next_attempt_at: datetime.datetime | None) -> bool:
    """The backoff table (1, 10, 100 minutes) is spent and the next retry is a day away, or
    no retry is planned at all: an operator must fix something."""
    return next_attempt_at is None or policy.retry_delay(attempts) >= policy.RETRY_CEILING


def certificate_alarming(now: datetime.datetime, threshold_days: int, host: HostFacts) -> bool:
    """In the last third of its lifetime, and not renewed although it should have been."""
    if host.not_before is None or host.not_after is None:
        return False
    left = host.not_after - now
    if left >= policy.lifetime(host.not_before, host.not_after) * ALERT_LIFETIME_LEFT:
        return False
    state = policy.certificate_state(
        now, threshold_days, host.not_before, host.not_after, host.ari_renew_at
    )
    return state in ALARMING_STATES


def host_problem(now: datetime.datetime, threshold_days: int, host: HostFacts) -> Problem | None:
    """The host's worst problem now, or None."""
    if not host.enabled or host.status == constants.STATUS_DISABLED:
        return None
    key = host_key(host.id)
    if host.status == constants.STATUS_PAUSED:
        return Problem(key, KIND_PAUSED, host.hostname, host.last_error, host.not_after)
    if certificate_alarming(now, threshold_days, host):
        assert host.not_after is not None
        reason = host.last_error or "no renewal has succeeded yet (see the host's history)"
        return Problem(key, KIND_EXPIRING, host.hostname, reason, host.not_after)
    if host.status == constants.STATUS_FAILED and retries_exhausted(
        host.attempts, host.next_attempt_at
    ):
        return Problem(key, KIND_FAILED, host.hostname, host.last_error, host.not_after)
    return None


@dataclass(frozen=True)
class Change:
    """One subject's change of state: ``problem`` None is a recovery."""

    key: str
    subject: str
    before: str | None  # the kind last notified, None if nothing was
    problem: Problem | None

    @property
    def kind(self) -> str:
        return self.problem.kind if self.problem else KIND_RECOVERED


@dataclass(frozen=True)
class Notified:
    """What was last told about a subject."""

    subject: str
    kind: str


def changes(
    problems: dict[str, Problem],
    notified: dict[str, Notified],
    recovered: set[str],
    gone: set[str],
) -> tuple[list[Change], set[str]]:
    """The changes to tell, and the keys to forget silently.

    ``recovered``: subjects without a problem that are fine again (an active host, a scan
    that runs); ``gone``: subjects deleted or disabled since (nothing to tell). A subject
    without a problem that is neither (a host retrying) keeps its notified state.
    """
    told: list[Change] = []
    forget = set()
    for key, problem in sorted(problems.items()):
        before = notified.get(key)
        if before is None or before.kind != problem.kind:
            told.append(Change(key, problem.subject, before.kind if before else None, problem))
    for key, before in sorted(notified.items()):
        if key in problems:
            continue
        if key in gone:
            forget.add(key)
        elif key in recovered:
            told.append(Change(key, before.subject, before.kind, None))
    return told, forget


def batches(
    found: list[Change], now: datetime.datetime, last_digest: datetime.datetime | None
) -> list[list[Change]]:
    """The emails to send: one per change, or one digest of them all; none while the
    digest of the day is spent (the changes wait for the next one)."""
    if not found:
        return []
    if len(found) <= MAX_SEPARATE_EMAILS:
        return [[change] for change in found]
    if last_digest is not None and now - last_digest < DIGEST_EVERY:
        return []
    return [found]

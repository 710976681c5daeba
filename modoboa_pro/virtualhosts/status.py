"""Read-only status of virtual hosts, shared by the API and the command line.

Nothing here writes: it reads the model (and, for the scan preview, the
certificate files) and says what an operator needs to know.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.utils import timezone

from . import constants, renewal, scan
from .adapters import storage
from .errors import StorageError
from .models import VirtualHost, VirtualHostEvent

# The daily scan renews a certificate on the day it becomes due; a failed
# renewal is retried within the day (1, 10, 100 minutes, then daily). A
# certificate still not renewed this long after it became due means renewals
# are not happening (scheduler stopped, host stuck): monitoring must alert.
OVERDUE_GRACE = datetime.timedelta(days=2)

# How many history entries the API and `show` return inline: a full run is
# six steps, so this covers the current run and the one before it.
RECENT_HISTORY = 12

# Exit codes of `manage.py virtualhosts` (documented in docs/operations.md).
EXIT_OK = 0
EXIT_ERROR = 1  # the command could not do what was asked (unknown host, busy, config)
EXIT_USAGE = 2  # bad arguments (argparse)
EXIT_FAILED = 3  # at least one enabled host is failed
EXIT_OVERDUE = 4  # at least one certificate is overdue for renewal or expired
EXIT_SCAN_STALE = 5  # the renewal scan has not run for 26 h while hosts have certificates

NEXT_RETRY = "retry"
NEXT_RENEWAL = "renewal"


def certificate(host: VirtualHost, now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """The current certificate's facts as recorded by the last successful run."""
    if host.cert_not_after is None:
        return None
    return {
        "serial": host.cert_serial,
        "issuer": host.cert_issuer,
        "not_before": host.cert_not_before,
        "not_after": host.cert_not_after,
        "days_left": host.days_left(now),
    }


def next_action(host: VirtualHost) -> str | None:
    """What ``next_attempt_at`` stands for: a retry after a failure, or a renewal."""
    if host.next_attempt_at is None or not host.enabled:
        return None
    if host.status == constants.STATUS_FAILED:
        return NEXT_RETRY
    if host.cert_not_after is not None:
        return NEXT_RENEWAL
    return None


def renewal_due_at(host: VirtualHost, threshold_days: int) -> datetime.datetime | None:
    if host.cert_not_after is None or host.cert_not_before is None:
        return None
    return renewal.renewal_due_at(threshold_days, host.cert_not_before, host.cert_not_after)


def is_overdue(host: VirtualHost, threshold_days: int, now: datetime.datetime) -> bool:
    """An enabled host whose certificate expired, or has been due for renewal too long."""
    if not host.enabled or host.cert_not_after is None:
        return False
    if host.cert_not_after <= now:
        return True
    due = renewal_due_at(host, threshold_days)
    return due is not None and now >= due + OVERDUE_GRACE


def problems(host: VirtualHost, threshold_days: int, now: datetime.datetime) -> list[str]:
    """What is wrong with this host, in words, worst first (empty when fine)."""
    found = []
    if is_overdue(host, threshold_days, now):
        assert host.cert_not_after is not None
        if host.cert_not_after <= now:
            found.append(f"certificate expired on {host.cert_not_after:%Y-%m-%d %H:%M} UTC")
        else:
            found.append(f"certificate overdue for renewal ({host.days_left(now)} days left)")
    if host.enabled and host.status == constants.STATUS_FAILED:
        step = f" at {host.failed_step}" if host.failed_step else ""
        found.append(f"failed{step}: {host.last_error}")
    return found


def exit_code(hosts: Iterable[VirtualHost], threshold_days: int, now: datetime.datetime) -> int:
    """The worst state among ``hosts`` as an exit code for scripts and monitoring."""
    code = EXIT_OK
    for host in hosts:
        if is_overdue(host, threshold_days, now):
            return EXIT_OVERDUE
        if host.enabled and host.status == constants.STATUS_FAILED:
            code = EXIT_FAILED
    return code


def history(host: VirtualHost, limit: int = RECENT_HISTORY) -> list[VirtualHostEvent]:
    """The host's most recent steps, newest first."""
    return list(host.events.all()[:limit])


def event_dict(event: VirtualHostEvent) -> dict[str, Any]:
    return {
        "step": event.step,
        "outcome": event.outcome,
        "started_at": event.started_at,
        "duration": event.duration,
        "message": event.message,
        "run_id": event.run_id,
    }


def summary(
    host: VirtualHost,
    threshold_days: int,
    now: datetime.datetime,
    *,
    with_history: bool = False,
) -> dict[str, Any]:
    """Everything the command line shows about one host (datetimes left as objects)."""
    data: dict[str, Any] = {
        "id": host.pk,
        "hostname": host.hostname,
        "enabled": host.enabled,
        "domain": host.domain.name if host.domain_id and host.domain else None,
        "status": host.status,
        "last_error": host.last_error,
        "failed_step": host.failed_step,
        "attempts": host.attempts,
        "certificate": certificate(host, now),
        "next_action": next_action(host),
        "next_attempt_at": host.next_attempt_at,
        "renewal_due_at": renewal_due_at(host, threshold_days),
        "overdue": is_overdue(host, threshold_days, now),
        "last_success_at": host.last_success_at,
        "created_at": host.created_at,
    }
    if with_history:
        data["history"] = [event_dict(e) for e in history(host)]
    return data


# -- what the renewal scan would do now ---------------------------------------

SCAN_RENEW = "renew"
SCAN_SKIP = "skip"


@dataclass(frozen=True)
class ScanDecision:
    """What the daily scan would do for one host, and why."""

    hostname: str
    host_id: int
    action: str  # SCAN_RENEW or SCAN_SKIP
    reason: str
    not_after: datetime.datetime | None = None
    due_at: datetime.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_plan(
    storage_root: Path, threshold_days: int, now: datetime.datetime | None = None
) -> list[ScanDecision]:
    """Preview of ``check_certificate_renewals``: read each fullchain.pem, decide, write nothing.

    Same rules as the scan, through the same pure policy (``renewal.decide``):
    renew when the remaining validity is below the (capped) threshold, when the
    certificate does not cover the name, or when its file is unusable; not
    while a failed host waits for its retry time; skip hosts without a
    certificate (provisioning handles them) and disabled hosts.
    """
    now = now or timezone.now()
    decisions = []
    for host in VirtualHost.objects.order_by("hostname"):
        decisions.append(_decide(host, storage_root, threshold_days, now))
    return decisions


def _decide(
    host: VirtualHost, storage_root: Path, threshold_days: int, now: datetime.datetime
) -> ScanDecision:
    def decision(action: str, reason: str, **kw: Any) -> ScanDecision:
        return ScanDecision(host.hostname, host.pk, action, reason, **kw)

    if not host.enabled:
        return decision(SCAN_SKIP, "disabled: its challenge cannot be served")
    problem: str | None = None
    facts = None
    try:
        pem = storage.read_fullchain(storage_root, host.hostname)
        facts = storage.parse_leaf(pem) if pem else None
    except StorageError as err:
        problem = f"certificate unreadable: {err.message}"
    else:
        if facts is None and host.cert_not_after is not None:
            problem = "certificate file missing although a certificate was issued"
    if problem is not None:
        # A new order replaces the bad file, planned like a retry.
        if renewal.in_backoff(now, host.attempts, host.next_attempt_at):
            return decision(SCAN_SKIP, f"{problem}; waiting for the planned retry")
        return decision(SCAN_RENEW, problem)
    if facts is None:
        return decision(SCAN_SKIP, "no certificate yet: provisioning handles it")
    verdict = scan.decide(host, facts, threshold_days, now)
    action = SCAN_RENEW if verdict.action == renewal.RENEW else SCAN_SKIP
    return decision(action, verdict.reason, not_after=facts.not_after, due_at=verdict.due_at)

"""One line on the health of the certificates: the "Modoboa Pro" menu item and Information page.

``collect`` counts (a few aggregate queries over the hosts a user may see);
``assess`` turns the counts into a severity and a sentence, worst problem first.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from . import alarms, constants, policy

# Vuetify theme colours, as Modoboa's menu reads them (``warning``/``error`` ring its bell).
SUCCESS = "success"
INFO = "info"
WARNING = "warning"
ERROR = "error"


@dataclass(frozen=True)
class Counts:
    """What the summary says, counted over enabled hosts (disabled ones need nothing)."""

    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    overdue: int = 0  # expired, or due for renewal for too long
    # Not expired, but less than a sixth of its lifetime left (policy.expires_soon): a
    # 90-day certificate with 3 days left, not a 6-day one.
    expiring: int = 0
    scan_stale: bool = False
    scan_not_queued: int = 0  # renewals the last scan could not queue (Redis unreachable)

    @property
    def failing(self) -> int:
        """Failed hosts, paused ones included: they need an operator all the more."""
        return self.by_status.get(constants.STATUS_FAILED, 0) + self.paused

    @property
    def paused(self) -> int:
        return self.by_status.get(constants.STATUS_PAUSED, 0)

    @property
    def in_progress(self) -> int:
        return self.by_status.get(constants.STATUS_PENDING, 0) + self.by_status.get(
            constants.STATUS_PROVISIONING, 0
        )


@dataclass(frozen=True)
class Health:
    color: str
    text: str


def collect(hosts: QuerySet, threshold_days: int, now: datetime.datetime | None = None) -> Counts:
    """Count ``hosts`` by status and certificate state; ask whether the renewal scan runs."""
    now = now or timezone.now()
    by_status = {
        row["status"]: row["n"] for row in hosts.order_by().values("status").annotate(n=Count("pk"))
    }
    enabled = hosts.filter(enabled=True).exclude(cert_not_after=None)
    expired = overdue = expiring = 0
    rows = enabled.values_list("cert_not_before", "cert_not_after", "ari_renew_at")
    for not_before, not_after, ari_renew_at in rows:
        if not_after <= now:
            expired += 1
        elif not_before is not None and policy.expires_soon(now, not_before, not_after):
            expiring += 1
        if policy.is_overdue(now, threshold_days, not_before, not_after, ari_renew_at):
            overdue += 1
    return Counts(
        total=sum(n for status, n in by_status.items() if status != constants.STATUS_DISABLED),
        by_status=by_status,
        expired=expired,
        overdue=overdue,
        expiring=expiring,
        scan_stale=alarms.staleness(now) is not None,
        scan_not_queued=latest.not_queued if (latest := alarms.last_scan()) else 0,
    )


def assess(counts: Counts) -> Health:
    """The worst problem first; otherwise how many hosts are fine."""
    if counts.expired:
        text = ngettext(
            "%(n)d certificate expired", "%(n)d certificates expired", counts.expired
        ) % {"n": counts.expired}
        return Health(ERROR, text)
    if counts.expiring:
        text = ngettext(
            "%(n)d certificate close to expiry",
            "%(n)d certificates close to expiry",
            counts.expiring,
        ) % {"n": counts.expiring}
        return Health(ERROR, text)
    if counts.scan_stale:
        return Health(ERROR, _("Renewal scan not running"))
    if counts.scan_not_queued:
        text = ngettext(
            "Renewal scan interrupted: %(n)d renewal not queued",
            "Renewal scan interrupted: %(n)d renewals not queued",
            counts.scan_not_queued,
        ) % {"n": counts.scan_not_queued}
        return Health(WARNING, text)
    if counts.failing:
        text = ngettext("%(n)d host failing", "%(n)d hosts failing", counts.failing) % {
            "n": counts.failing
        }
        return Health(WARNING, text)
    if counts.overdue:
        text = ngettext(
            "%(n)d certificate overdue for renewal",
            "%(n)d certificates overdue for renewal",
            counts.overdue,
        ) % {"n": counts.overdue}
        return Health(WARNING, text)
    if counts.total == 0:
        return Health(INFO, _("No virtual hosts yet"))
    http_only = counts.by_status.get(constants.STATUS_HTTP_ONLY, 0)
    if http_only == counts.total:
        text = ngettext(
            "%(n)d host, served over HTTP only", "%(n)d hosts, served over HTTP only", http_only
        ) % {"n": http_only}
        return Health(INFO, text)
    if counts.in_progress:
        text = ngettext(
            "%(total)d host, %(n)d being provisioned",
            "%(total)d hosts, %(n)d being provisioned",
            counts.total,
        ) % {"total": counts.total, "n": counts.in_progress}
        return Health(INFO, text)
    text = ngettext(
        "%(n)d host, certificate valid", "%(n)d hosts, all certificates valid", counts.total
    ) % {"n": counts.total}
    return Health(SUCCESS, text)


def summary(hosts: QuerySet, threshold_days: int, now: datetime.datetime | None = None) -> dict:
    """What the API's summary answers: counts, the last scan, the verdict."""
    counts = collect(hosts, threshold_days, now)
    verdict = assess(counts)
    latest = alarms.last_scan()
    return {
        "total": counts.total,
        "by_status": counts.by_status,
        "failing": counts.failing,
        "paused": counts.paused,
        "overdue": counts.overdue,
        "expired": counts.expired,
        "expiring": counts.expiring,
        "scan": {
            "last_at": latest.finished_at if latest else None,
            "stale": counts.scan_stale,
            "not_queued": counts.scan_not_queued,
        },
        "health": {"color": verdict.color, "text": verdict.text},
    }

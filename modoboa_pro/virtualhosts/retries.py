"""Retries: re-run what failed once its retry time has come, and what a crash left stuck.

Modoboa's RQ workers run without RQ's scheduler, so a failed run cannot
schedule its own retry: ``jobs.retry_due_virtualhosts`` (every few minutes from
cron, and at the end of the daily scan) selects what is due and enqueues it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from . import constants, renewal, services
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")


@dataclass
class RetryReport:
    retried: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.retried)} retried, {len(self.busy)} already queued or running"


def due(now: datetime.datetime) -> Q:
    """Enabled hosts whose retry time has come, or left pending/provisioning by a crash."""
    failed = Q(status=constants.STATUS_FAILED, next_attempt_at__lte=now)
    stuck = Q(
        status__in=(constants.STATUS_PENDING, constants.STATUS_PROVISIONING),
        updated_at__lt=now - renewal.PROVISIONING_STUCK_AFTER,
    )
    return Q(enabled=True) & (failed | stuck)


def run(
    provision: Callable[[VirtualHost], None],
    renew: Callable[[VirtualHost], bool] | None,
    *,
    now: datetime.datetime | None = None,
) -> RetryReport:
    """Enqueue ``provision(host)`` (no certificate yet) or ``renew(host)`` for each due host.

    ``renew=None`` (Let's Encrypt disabled) leaves hosts with a certificate alone.
    """
    now = now or timezone.now()
    report = RetryReport()
    for host in VirtualHost.objects.filter(due(now)).order_by("pk"):
        if services.is_busy(host):
            report.busy.append(host.hostname)
            continue
        why = "stuck" if host.status != constants.STATUS_FAILED else "retry time reached"
        if host.cert_not_after is None:
            provision(host)
        elif renew is None or not renew(host):
            report.busy.append(host.hostname)
            continue
        report.retried.append(host.hostname)
        logger.info(
            "virtualhost %s: retry enqueued (%s, attempt %d)", host.hostname, why, host.attempts + 1
        )
    if report.retried or report.busy:
        logger.info("virtual host retries: %s", report.summary())
    return report

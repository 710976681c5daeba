"""The retry sweep: re-run what failed once its retry time has come, what a crash left stuck,
and renew what is planned now.

The backoff itself (1 min, 10 min, 100 min, then daily, or the CA's
retry-after) is ``policy.RETRY_BACKOFF``, applied by ``recording.mark_failure``
when a run fails. Modoboa's RQ workers run without RQ's scheduler, so a failed
run cannot schedule its own retry: ``jobs.retry_due_virtualhosts`` (every few
minutes from cron, and at the end of the daily scan) selects what is due here.

The same holds for renewals: each host's planned renewal time (``next_attempt_at`` of a
host with a certificate and no failure, ``policy.planned_renewal_at``) is spread over
hours; this sweep enqueues the renewal once that time has come, the daily scan being the
safety net.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from . import constants, policy, queueing
from .errors import QueueUnavailable
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")


@dataclass
class RetryReport:
    retried: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)  # planned renewals enqueued
    busy: list[str] = field(default_factory=list)
    stopped: str = ""  # why the sweep stopped early (Redis unreachable)

    def summary(self) -> str:
        line = (
            f"{len(self.retried)} retried, {len(self.renewed)} planned renewal(s) enqueued, "
            f"{len(self.busy)} already queued or running"
        )
        return f"{line}; stopped: {self.stopped}" if self.stopped else line


def due(now: datetime.datetime) -> Q:
    """Hosts whose retry or planned renewal time has come, or maybe left pending/provisioning
    by a crash.

    ``run`` retries the latter only when no live run holds them (``queueing.is_busy``).

    Disabled hosts count too: a failed or interrupted disable is retried like a run.
    """
    failed = Q(status=constants.STATUS_FAILED, next_attempt_at__lte=now)
    quiet = Q(updated_at__lt=now - policy.ORPHANED_RUN_AFTER)
    stuck = Q(status__in=(constants.STATUS_PENDING, constants.STATUS_PROVISIONING)) & quiet
    # Disabled by an admin, but no disable run ever recorded it (its job was lost).
    undone = Q(enabled=False) & ~Q(status=constants.STATUS_DISABLED) & quiet
    planned = Q(
        status=constants.STATUS_ACTIVE, enabled=True, attempts=0, next_attempt_at__lte=now
    ) & ~Q(cert_not_after=None)
    return failed | stuck | undone | planned


def _job_for(host: VirtualHost, letsencrypt: bool) -> tuple[str, tuple[object, ...]] | None:
    """Which job retries this host, with its arguments (None: nothing to retry now)."""
    if not host.enabled:
        return queueing.DISABLE, (host.pk,)
    if host.cert_not_after is None:
        return queueing.PROVISION, (host.pk,)
    if not letsencrypt:
        return None  # its certificate stays until Let's Encrypt is on again
    # A Renew now that failed is retried as one (forced) until its certificate is stored;
    # a forced key rotation until its key is served.
    forced = host.renewal_requested_at is not None or host.key_rotation_requested_at is not None
    return queueing.RENEW, (host.pk, forced)


def run(*, letsencrypt: bool, now: datetime.datetime | None = None) -> RetryReport:
    """Enqueue the retry of each due host: provisioning, renewal, or disable."""
    now = now or timezone.now()
    report = RetryReport()
    for host in VirtualHost.objects.filter(due(now)).order_by("pk"):
        job = _job_for(host, letsencrypt)
        if job is None:
            continue
        path, args = job
        try:
            queued = not queueing.is_busy(host.pk, host.hostname) and queueing.enqueue_once(
                path, host.pk, *args, description=f"retry {host.hostname}"
            )
        except QueueUnavailable as err:
            # Every other host needs Redis too: the next sweep takes them all up again.
            report.stopped = f"{err.message} The next sweep retries."
            logger.error("virtual host retries stopped at %s: %s", host.hostname, err.message)
            break
        if not queued:
            report.busy.append(host.hostname)
            continue
        if path == queueing.RENEW and host.status == constants.STATUS_ACTIVE:
            report.renewed.append(host.hostname)
            logger.info(
                "virtualhost %s: planned renewal time reached, renewal enqueued", host.hostname
            )
            continue
        why = "stuck" if host.status != constants.STATUS_FAILED else "retry time reached"
        report.retried.append(host.hostname)
        logger.info(
            "virtualhost %s: retry enqueued (%s, attempt %d)", host.hostname, why, host.attempts + 1
        )
    if report.retried or report.renewed or report.busy or report.stopped:
        logger.info("virtual host retries: %s", report.summary())
    return report

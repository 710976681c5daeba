"""The renewal scan: read each enabled host's certificate from disk, fan out due renewals.

Selection only: the renewals themselves run as one job per host (``jobs``).
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import django_rq
from django.db.models import Count, Min, Q
from django.utils import timezone
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job

from . import constants, history, renewal
from .adapters import locks, storage
from .adapters.storage import CertificateFacts
from .errors import LockHeld, VirtualHostError
from .models import RenewalScan, VirtualHost

logger = logging.getLogger("modoboa.jobs")

# The single alarm saying that the scan itself is not running.
SCAN_ALARM = "virtualhosts:renewal-scan"
# Scan records kept: three months of daily runs, for the status output.
SCANS_KEEP = 90
# Hosts read per round trip while streaming; the scan holds one chunk at a time.
CHUNK_SIZE = 500
# Serialises "is a renewal queued? if not, enqueue one" for one host across
# schedulers; a check-and-enqueue takes milliseconds.
ENQUEUE_LOCK_TTL = datetime.timedelta(seconds=30)
# A renewal may wait for the CA (ACME_ORDER_TIMEOUT) and for the privileged
# worker's reload (VIRTUALHOSTS_RELOAD_TIMEOUT): RQ's default 180 s is too short.
RENEWAL_JOB_TIMEOUT = 600

SKIP_LETSENCRYPT_OFF = "letsencrypt_disabled"
NO_CERT_PROVISIONING = "provisioning"
NO_CERT_STUCK = "stuck"
NO_CERT_FAILED = "failed"
NO_CERT_HTTP_ONLY = "http_only"

_FIELDS = (
    "id",
    "hostname",
    "domain_id",
    "enabled",
    "status",
    "last_error",
    "failed_step",
    "attempts",
    "next_attempt_at",
    "cert_serial",
    "cert_issuer",
    "cert_not_before",
    "cert_not_after",
    "updated_at",
)


@dataclass
class ScanReport:
    """What one scan saw and did; ``summary()`` is its log line."""

    started_at: datetime.datetime
    seen: int = 0
    due: int = 0
    disabled: int = 0
    enqueued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    without_certificate: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    urgent: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        no_cert = sum(len(v) for v in self.without_certificate.values())
        parts = [
            f"{self.seen} enabled host(s) seen",
            f"{self.due} due",
            f"{len(self.enqueued)} renewal(s) enqueued",
        ]
        skipped = [
            f"{len(self.already_queued)} already queued or running",
            f"{self.skipped[renewal.SKIP_BACKOFF]} waiting for their retry time",
            f"{self.skipped[renewal.SKIP_NOT_DUE]} not due",
            f"{self.disabled} disabled",
            f"{no_cert} without a certificate{self._no_cert_detail()}",
        ]
        if self.skipped[SKIP_LETSENCRYPT_OFF]:
            skipped.insert(0, f"{self.skipped[SKIP_LETSENCRYPT_OFF]} due (Let's Encrypt disabled)")
        line = ", ".join(parts) + "; skipped: " + ", ".join(skipped)
        line += f"; {len(self.unreadable)} unreadable certificate file(s)"
        if self.unreadable:
            line += f" ({_names(self.unreadable)})"
        if self.urgent:
            line += f"; {len(self.urgent)} expiring within 7 days ({_names(self.urgent)})"
        if self.errors:
            line += f"; {len(self.errors)} error(s) ({_names(self.errors)})"
        return line

    def _no_cert_detail(self) -> str:
        details = [
            f"{len(names)} {kind}: {_names(names)}"
            for kind, names in sorted(self.without_certificate.items())
            if kind in (NO_CERT_FAILED, NO_CERT_STUCK) and names
        ]
        return f" ({'; '.join(details)})" if details else ""


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run(
    storage_root: Path,
    threshold_days: int,
    enqueue: Callable[[VirtualHost], bool] | None,
    *,
    now: datetime.datetime | None = None,
) -> ScanReport:
    """Scan every enabled host; ``enqueue(host)`` returns False when one is already pending.

    ``enqueue=None`` (Let's Encrypt disabled) reports due hosts without renewing them.

    A constant number of SQL queries whatever the number of hosts (hosts are
    streamed), plus one UPDATE per host whose recorded state changes.
    """
    now = now or timezone.now()
    record = RenewalScan.objects.create(started_at=now)
    report = ScanReport(started_at=now)
    report.disabled = VirtualHost.objects.filter(enabled=False).count()
    hosts = VirtualHost.objects.filter(enabled=True).only(*_FIELDS).order_by("pk")
    for host in hosts.iterator(chunk_size=CHUNK_SIZE):
        report.seen += 1
        try:
            _scan_host(host, storage_root, threshold_days, enqueue, now, report)
        except VirtualHostError as err:  # e.g. Redis unreachable: report, go on
            report.errors.append(host.hostname)
            logger.error("virtualhost %s: renewal scan failed: %s", host.hostname, err.message)
    summary = report.summary()
    logger.info("certificate renewal scan: %s", summary)
    record.finished_at = timezone.now()
    record.hosts_seen = report.seen
    record.due = report.due
    record.enqueued = len(report.enqueued)
    record.unreadable = len(report.unreadable)
    record.summary = summary[:4000]
    record.save()
    _prune_scans()
    refresh_staleness_alarm()
    return report


def _scan_host(
    host: VirtualHost,
    storage_root: Path,
    threshold_days: int,
    enqueue: Callable[[VirtualHost], bool] | None,
    now: datetime.datetime,
    report: ScanReport,
) -> None:
    facts, problem = _read_certificate(host, storage_root)
    if problem is not None:
        report.unreadable.append(host.hostname)
        logger.warning("virtualhost %s: %s", host.hostname, problem)
        _record_problem(host, problem, now)
        # A new order replaces the bad file; it is planned like a retry.
        if not renewal.in_backoff(now, host.attempts, host.next_attempt_at):
            _schedule(host, enqueue, "its certificate file is unusable", report)
        return
    if facts is None:
        kind = _without_certificate(host, now)
        report.without_certificate.setdefault(kind, []).append(host.hostname)
        return
    _sync_facts(host, facts, threshold_days)
    if renewal.is_urgent(now, facts.not_after, host.attempts):
        report.urgent.append(host.hostname)
        alarm_urgent(host, facts.not_after, now)
    decision = decide(host, facts, threshold_days, now)
    if decision.action == renewal.RENEW:
        report.due += 1
        _schedule(host, enqueue, decision.reason, report)
    else:
        report.skipped[decision.action] += 1
        logger.debug("virtualhost %s: %s", host.hostname, decision.reason)


def decide(
    host: VirtualHost, facts: CertificateFacts, threshold_days: int, now: datetime.datetime
) -> renewal.Decision:
    """The renewal policy applied to one host and the certificate read from its files."""
    return renewal.decide(
        now,
        threshold_days,
        facts.not_before,
        facts.not_after,
        covers_hostname=host.hostname in facts.names,
        attempts=host.attempts,
        next_attempt_at=host.next_attempt_at,
    )


def _read_certificate(
    host: VirtualHost, storage_root: Path
) -> tuple[CertificateFacts | None, str | None]:
    """``(facts, None)``, ``(None, None)`` without a certificate, or ``(None, problem)``."""
    path = storage.certificate_paths(storage_root, host.hostname)[0]
    try:
        pem = storage.read_fullchain(storage_root, host.hostname)
        if pem is None:
            if host.cert_not_after is None:
                return None, None
            return None, (
                f"{path} is missing although a certificate was issued (serial "
                f"{host.cert_serial}); nginx fails its next configuration test until a new "
                "certificate is stored. A renewal is planned to replace it."
            )
        return storage.parse_leaf(pem), None
    except VirtualHostError as err:
        return None, f"{path}: {err.message}"


def _schedule(
    host: VirtualHost, enqueue: Callable[[VirtualHost], bool] | None, why: str, report: ScanReport
) -> None:
    if enqueue is None:
        report.skipped[SKIP_LETSENCRYPT_OFF] += 1
        logger.warning("virtualhost %s: due (%s) but Let's Encrypt is disabled", host.hostname, why)
    elif enqueue(host):
        report.enqueued.append(host.hostname)
        logger.info("virtualhost %s: renewal scheduled (%s)", host.hostname, why)
    else:
        report.already_queued.append(host.hostname)
        logger.info("virtualhost %s: renewal already queued or running", host.hostname)


def _without_certificate(host: VirtualHost, now: datetime.datetime) -> str:
    if host.status == constants.STATUS_FAILED:
        return NO_CERT_FAILED
    if host.status == constants.STATUS_HTTP_ONLY:
        return NO_CERT_HTTP_ONLY
    in_progress = host.status in (constants.STATUS_PENDING, constants.STATUS_PROVISIONING)
    if in_progress and now - host.updated_at < renewal.PROVISIONING_STUCK_AFTER:
        return NO_CERT_PROVISIONING
    return NO_CERT_STUCK


def _record_problem(host: VirtualHost, problem: str, now: datetime.datetime) -> None:
    """Show the problem on the host (status and reason), unless a run is busy with it."""
    message = problem[:4000]
    if host.status == constants.STATUS_FAILED and host.last_error == message:
        return
    VirtualHost.objects.filter(pk=host.pk).exclude(status=constants.STATUS_PROVISIONING).update(
        status=constants.STATUS_FAILED,
        failed_step=constants.STEP_RENEW,
        last_error=message,
        updated_at=now,
    )


def _sync_facts(host: VirtualHost, facts: CertificateFacts, threshold_days: int) -> None:
    """Record the certificate found on disk when the model says otherwise."""
    recorded = (host.cert_serial, host.cert_not_before, host.cert_not_after)
    if recorded == (facts.serial, facts.not_before, facts.not_after):
        return
    changes: dict[str, object] = {
        "cert_serial": facts.serial,
        "cert_issuer": facts.issuer[:255],
        "cert_not_before": facts.not_before,
        "cert_not_after": facts.not_after,
        "updated_at": timezone.now(),
    }
    if host.attempts == 0:
        changes["next_attempt_at"] = renewal.renewal_due_at(
            threshold_days, facts.not_before, facts.not_after
        )
    # Conditional on what we read: a renewal finishing meanwhile wins.
    updated = VirtualHost.objects.filter(pk=host.pk, cert_serial=host.cert_serial).update(**changes)
    if updated:
        for name, value in changes.items():
            setattr(host, name, value)
        logger.info(
            "virtualhost %s: recorded the certificate found on disk (serial %s, expires %s)",
            host.hostname,
            facts.serial,
            f"{facts.not_after:%Y-%m-%d %H:%M} UTC",
        )


def _prune_scans() -> None:
    stale = list(RenewalScan.objects.values_list("pk", flat=True)[SCANS_KEEP:])
    if stale:
        RenewalScan.objects.filter(pk__in=stale).delete()


# -- one renewal per host, whoever asks and however often ---------------------------


def enqueue_renewal_once(host: VirtualHost, func: Callable[[int], object]) -> bool:
    """Enqueue ``func(host.pk)`` as the host's renewal unless one is queued or running.

    Atomic across schedulers: a short Redis lock per host serialises the
    check and the enqueue, and RQ's ``unique=True`` refuses a second job with
    the same id anyway. A finished job's id is reused; a failed job is
    requeued, so RQ keeps its traceback. Returns True when this call enqueued.
    """
    from . import services

    queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
    connection = queue.connection
    job_id = services.job_id("renew", host.pk)
    try:
        with locks.HostLock(connection, f"renewal-enqueue:{host.pk}", ENQUEUE_LOCK_TTL):
            try:
                job: Job | None = Job.fetch(job_id, connection=connection)
            except NoSuchJobError:
                job = None
            if job is not None:
                state = services.job_state(job)
                if state in services.PENDING_STATES:
                    return False
                if state == "failed":
                    queue.failed_job_registry.requeue(job)
                    return True
                job.delete()
            queue.enqueue(
                func,
                host.pk,
                job_id=job_id,
                unique=True,
                job_timeout=RENEWAL_JOB_TIMEOUT,
                description=f"renew the certificate of {host.hostname}",
            )
            return True
    except (LockHeld, DuplicateJobError):
        return False


# -- alarms ------------------------------------------------------------------------


def alarm_urgent(host: VirtualHost, not_after: datetime.datetime, now: datetime.datetime) -> None:
    """Raise the host's alarm: its certificate expires soon and renewal keeps failing."""
    left = not_after - now
    when = "has expired" if left.total_seconds() <= 0 else f"expires in {_duration(left)}"
    title = (
        f"Virtual host {host.hostname}: the certificate {when} "
        f"({not_after:%Y-%m-%d %H:%M} UTC) and its renewal keeps failing "
        f"({host.attempts} attempt(s)): {host.last_error or 'see the host history'}"
    )
    history.open_alarm(host, title[:2000])
    logger.error("%s", title)


def _duration(delta: datetime.timedelta) -> str:
    if delta.days >= 1:
        return f"{delta.days} day(s)"
    return f"{max(int(delta.total_seconds() // 3600), 0)} hour(s)"


def last_scan() -> RenewalScan | None:
    """The most recent completed scan, or None."""
    return RenewalScan.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()


def staleness(now: datetime.datetime | None = None) -> str | None:
    """Why renewals are not happening (the scan has not run lately), or None when fine."""
    now = now or timezone.now()
    latest = last_scan()
    last_run = latest.finished_at if latest else None
    certified = VirtualHost.objects.filter(enabled=True).filter(~Q(cert_not_after=None))
    found = certified.aggregate(count=Count("pk"), since=Min("created_at"))
    with_certs = found["count"]
    if not renewal.is_scan_stale(now, last_run, with_certs, found["since"]):
        return None
    hours = int(renewal.SCAN_STALE_AFTER.total_seconds() // 3600)
    ran = f"last run {last_run:%Y-%m-%d %H:%M} UTC" if last_run else "it has never run"
    return (
        f"The certificate renewal scan has not run for more than {hours} hours ({ran}) while "
        f"{with_certs} virtual host(s) have certificates: they will expire unrenewed. Start the "
        "RQ cron scheduler (python manage.py rqcron cron_config.py) with "
        "check_certificate_renewals registered, and an RQ worker for the 'modoboa' queue."
    )


def refresh_staleness_alarm(now: datetime.datetime | None = None) -> str | None:
    """Open (or close) the Alarm saying the scan is not running; return its reason."""
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    reason = staleness(now)
    opened = Alarm.objects.filter(internal_name=SCAN_ALARM, status=admin_constants.ALARM_OPENED)
    if reason is None:
        for alarm in opened:
            alarm.close()
        return None
    alarm = opened.first()
    if alarm is None:
        Alarm.objects.create(internal_name=SCAN_ALARM, title=reason)
        logger.error("%s", reason)
    elif alarm.title != reason:
        alarm.title = reason
        alarm.save(update_fields=["title"])
    return reason

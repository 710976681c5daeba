"""Modoboa alarms (the UI's Alarms page): one per failing host, one when the scan stops.

Each alarm is opened, updated or closed by its ``internal_name``; Modoboa lists
only alarms filed under a domain, hence ``alarm_domain``.
"""

from __future__ import annotations

import datetime
import logging

from django.db import transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from . import policy
from .models import RenewalScan, VirtualHost

logger = logging.getLogger("modoboa.jobs")

HOST_ALARM_PREFIX = "virtualhost:"
# A mail host's TLSA warning (a 2 1 1 record pinning a CA not in its chain): apart from the
# host's failure alarm, which a successful run closes while the record is still wrong.
TLSA_ALARM_PREFIX = "virtualhost-tlsa:"
# The single alarm saying that the renewal scan itself is not running.
SCAN_ALARM = "virtualhosts:renewal-scan"


def _open(internal_name: str, title: str, domain=None) -> bool:
    """Open the alarm, or update its title; return True when it was newly opened."""
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    with transaction.atomic():
        alarm = Alarm.objects.filter(
            internal_name=internal_name, status=admin_constants.ALARM_OPENED
        ).first()
        if alarm is None:
            Alarm.objects.create(internal_name=internal_name, title=title, domain=domain)
            return True
        if alarm.title != title:
            alarm.title = title
            alarm.save(update_fields=["title"])
    return False


def _close(internal_name: str) -> None:
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    for alarm in Alarm.objects.filter(
        internal_name=internal_name, status=admin_constants.ALARM_OPENED
    ):
        alarm.close()


# -- one alarm per host -------------------------------------------------------------


def open_host_alarm(host: VirtualHost, title: str) -> None:
    """Open (or update) the single alarm of this host."""
    _open(f"{HOST_ALARM_PREFIX}{host.pk}", title[:2000], alarm_domain(host))


def close_host_alarm(host: VirtualHost) -> None:
    _close(f"{HOST_ALARM_PREFIX}{host.pk}")


def open_tlsa_alarm(host: VirtualHost, title: str) -> bool:
    """Open (or update) the host's TLSA alarm; True when newly opened."""
    return _open(f"{TLSA_ALARM_PREFIX}{host.pk}", title[:2000], alarm_domain(host))


def close_tlsa_alarm(host: VirtualHost) -> None:
    _close(f"{TLSA_ALARM_PREFIX}{host.pk}")


def alarm_domain(host: VirtualHost):
    """The Modoboa domain an alarm is filed under: Modoboa lists only alarms with one.

    The host's own domain, else the Modoboa domain whose name is the longest
    suffix of the hostname (www.example.com -> example.com), else None.
    """
    if host.domain_id is not None:
        return host.domain
    from modoboa.admin.models import Domain

    labels = host.hostname.split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    by_name = {d.name: d for d in Domain.objects.filter(name__in=candidates)}
    for name in candidates:  # longest first
        if name in by_name:
            return by_name[name]
    return None


def alarm_urgent(host: VirtualHost, not_after: datetime.datetime, now: datetime.datetime) -> None:
    """Raise the host's alarm: its certificate expires soon and renewal keeps failing."""
    left = not_after - now
    when = (
        "has expired"
        if left.total_seconds() <= 0
        else f"expires in {policy.format_duration(left)}"
    )
    title = (
        f"Virtual host {host.hostname}: the certificate {when} "
        f"({not_after:%Y-%m-%d %H:%M} UTC) and its renewal keeps failing "
        f"({host.attempts} attempt(s)): {host.last_error or 'see the host history'}"
    )
    open_host_alarm(host, title)
    logger.error("%s", title[:2000])


# -- the renewal scan is not running ------------------------------------------------


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
    if not policy.is_scan_stale(now, last_run, with_certs, found["since"]):
        return None
    hours = int(policy.SCAN_STALE_AFTER.total_seconds() // 3600)
    ran = f"last run {last_run:%Y-%m-%d %H:%M} UTC" if last_run else "it has never run"
    return (
        f"The certificate renewal scan has not run for more than {hours} hours ({ran}) while "
        f"{with_certs} virtual host(s) have certificates: they will expire unrenewed. Start the "
        "RQ cron scheduler (python manage.py rqcron cron_config.py) with "
        "check_certificate_renewals registered, and an RQ worker for the 'modoboa' queue."
    )


def refresh_staleness_alarm(now: datetime.datetime | None = None) -> str | None:
    """Open (or close) the alarm saying the scan is not running; return its reason."""
    reason = staleness(now)
    if reason is None:
        _close(SCAN_ALARM)
    elif _open(SCAN_ALARM, reason):
        logger.error("%s", reason)
    return reason

"""Read-only presentation of virtual hosts, shared by the API and the command line.

Nothing here writes: it reads the model and says what an operator needs to know.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from . import constants, policy
from .models import VirtualHost, VirtualHostEvent

# How many history entries the API and `show` return inline: a full run is
# six steps, so this covers the current run and the one before it.
RECENT_HISTORY = 12

NEXT_RETRY = "retry"
NEXT_RENEWAL = "renewal"


def certificate(
    host: VirtualHost, threshold_days: int, now: datetime.datetime | None = None
) -> dict[str, Any] | None:
    """The current certificate's facts as recorded by the last successful run, with its
    state relative to its own lifetime (``policy.certificate_state``)."""
    if host.cert_not_after is None:
        return None
    now = now or timezone.now()
    return {
        "serial": host.cert_serial,
        "issuer": host.cert_issuer,
        "not_before": host.cert_not_before,
        "not_after": host.cert_not_after,
        "days_left": host.days_left(now),
        "lifetime_left": lifetime_left(host, now),
        "state": policy.certificate_state(
            now, threshold_days, host.cert_not_before, host.cert_not_after, host.ari_renew_at
        ),
        "renewal_due_at": renewal_due_at(host, threshold_days),
    }


def lifetime_left(host: VirtualHost, now: datetime.datetime | None = None) -> float | None:
    """The share of the certificate's lifetime still ahead (1 new, 0 expiring, < 0 expired).

    The UI colours by this, not by days: 5 days left is most of a 6-day certificate's
    life, and almost none of a 90-day one's.
    """
    if host.cert_not_after is None or host.cert_not_before is None:
        return None
    total = (host.cert_not_after - host.cert_not_before).total_seconds()
    if total <= 0:
        return 0.0
    left = (host.cert_not_after - (now or timezone.now())).total_seconds()
    return round(left / total, 4)


def current_step(host: VirtualHost) -> str | None:
    """The step a provisioning run is at now, or None when no provisioning is running."""
    if host.status != constants.STATUS_PROVISIONING:
        return None
    return host.current_step or None


def next_action(host: VirtualHost) -> str | None:
    """What ``next_attempt_at`` stands for: a retry after a failure, or the planned renewal
    (the lifetime rule's due time plus the host's share of the spread)."""
    if host.next_attempt_at is None or not host.enabled:
        return None
    if host.status == constants.STATUS_FAILED:
        return NEXT_RETRY
    if host.cert_not_after is not None:
        return NEXT_RENEWAL
    return None


def renewal_due_at(host: VirtualHost, threshold_days: int) -> datetime.datetime | None:
    """When the certificate is due: at the CA's ARI time, else by the lifetime rule."""
    return renewal_plan(host, threshold_days)[0]


def renewal_plan(
    host: VirtualHost, threshold_days: int
) -> tuple[datetime.datetime | None, str | None]:
    """When the current certificate is to be renewed, and by which rule: ``ari`` (the time
    chosen in the CA's renewal window) or ``lifetime``; (None, None) without a certificate."""
    if host.cert_not_after is None or host.cert_not_before is None:
        return None, None
    return policy.planned_renewal(
        threshold_days, host.cert_not_before, host.cert_not_after, host.ari_renew_at
    )


def is_overdue(host: VirtualHost, threshold_days: int, now: datetime.datetime) -> bool:
    """An enabled host whose certificate expired, or has been due for renewal too long."""
    return host.enabled and policy.is_overdue(
        now, threshold_days, host.cert_not_before, host.cert_not_after, host.ari_renew_at
    )


def problems(host: VirtualHost, threshold_days: int, now: datetime.datetime) -> list[str]:
    """What is wrong with this host, in words, worst first (empty when fine)."""
    found = []
    if is_overdue(host, threshold_days, now):
        assert host.cert_not_after is not None
        if host.cert_not_after <= now:
            found.append(f"certificate expired on {host.cert_not_after:%Y-%m-%d %H:%M} UTC")
        else:
            left = policy.format_duration(host.cert_not_after - now)
            lifetime = host.cert_not_after - (host.cert_not_before or host.cert_not_after)
            found.append(
                f"certificate overdue for renewal ({left} left of "
                f"{policy.format_duration(lifetime)})"
            )
    if host.enabled and host.status in (constants.STATUS_FAILED, constants.STATUS_PAUSED):
        step = f" at {host.failed_step}" if host.failed_step else ""
        found.append(f"{host.status}{step}: {host.last_error}")
    return found


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
        "serves_mail": host.serves_mail,
        "status": host.status,
        "current_step": current_step(host),
        "last_error": host.last_error,
        "failed_step": host.failed_step,
        "attempts": host.attempts,
        "failing_since": host.failing_since,
        "certificate": certificate(host, threshold_days, now),
        "next_action": next_action(host),
        "next_attempt_at": host.next_attempt_at,
        "renewal_due_at": renewal_due_at(host, threshold_days),
        "planned_renewal_at": renewal_plan(host, threshold_days)[0],
        "renewal_source": renewal_plan(host, threshold_days)[1],
        "renewal_explanation_url": host.ari_explanation_url or None,
        "overdue": is_overdue(host, threshold_days, now),
        "last_success_at": host.last_success_at,
        "created_at": host.created_at,
    }
    if with_history:
        data["history"] = [event_dict(e) for e in history(host)]
    return data

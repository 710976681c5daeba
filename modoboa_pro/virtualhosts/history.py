"""Record observed state: step history, status, certificate facts, alarms.

Called from jobs and the pipeline only; the API and UI read what this writes.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction
from django.utils import timezone

from . import constants, renewal
from .adapters.storage import CertificateFacts
from .errors import VirtualHostError
from .models import VirtualHost, VirtualHostEvent

logger = logging.getLogger("modoboa.jobs")

ALARM_PREFIX = "virtualhost:"


class Run:
    """One run of the chain for one host: records each step as it goes."""

    def __init__(self, host: VirtualHost, run_id: str, kind: str) -> None:
        self.host = host
        self.run_id = run_id
        self.kind = kind
        self.current_step = ""

    @contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        """Time a step, log it and store it in the host's history."""
        self.current_step = name
        result = StepResult()
        started = timezone.now()
        clock = time.monotonic()
        logger.info("virtualhost %s: %s started", self.host.hostname, name)
        try:
            yield result
        except VirtualHostError as err:
            self._event(name, constants.OUTCOME_FAILED, started, clock, err.message)
            logger.warning(
                "virtualhost %s: %s failed after %.2fs: %s",
                self.host.hostname,
                name,
                time.monotonic() - clock,
                err.message,
            )
            raise
        except Exception as err:
            self._event(name, constants.OUTCOME_FAILED, started, clock, f"internal error: {err!r}")
            raise
        outcome = constants.OUTCOME_SKIPPED if result.skipped else constants.OUTCOME_OK
        self._event(name, outcome, started, clock, result.message)
        logger.info(
            "virtualhost %s: %s %s in %.2fs%s",
            self.host.hostname,
            name,
            outcome,
            time.monotonic() - clock,
            f": {result.message}" if result.message else "",
        )

    def _event(
        self, step: str, outcome: str, started: datetime.datetime, clock: float, message: str
    ) -> None:
        VirtualHostEvent.objects.create(
            virtualhost=self.host,
            run_id=self.run_id,
            step=step,
            outcome=outcome,
            started_at=started,
            duration=round(time.monotonic() - clock, 3),
            message=message[:4000],
        )
        _prune(self.host)


class StepResult:
    """What a step reports: a message, and whether it was skipped as already done."""

    def __init__(self) -> None:
        self.message = ""
        self.skipped = False

    def skip(self, message: str) -> None:
        self.skipped = True
        self.message = message


def _prune(host: VirtualHost) -> None:
    stale = VirtualHostEvent.objects.filter(virtualhost=host).values_list("id", flat=True)[
        constants.HISTORY_KEEP :
    ]
    ids = list(stale)
    if ids:
        VirtualHostEvent.objects.filter(id__in=ids).delete()


def mark_status(host: VirtualHost, status: str) -> None:
    host.status = status
    host.save(update_fields=["status", "updated_at"])


def mark_success(
    host: VirtualHost,
    facts: CertificateFacts | None,
    *,
    status: str,
    threshold_days: int,
) -> None:
    """The run succeeded: store certificate facts, plan the renewal, close alarms."""
    now = timezone.now()
    host.status = status
    host.last_error = ""
    host.failed_step = ""
    host.attempts = 0
    host.last_success_at = now
    if facts is not None:
        host.cert_serial = facts.serial
        host.cert_issuer = facts.issuer[:255]
        host.cert_not_before = facts.not_before
        host.cert_not_after = facts.not_after
        host.next_attempt_at = renewal.renewal_due_at(
            threshold_days, facts.not_before, facts.not_after
        )
    else:
        host.next_attempt_at = None
    host.save()
    close_alarm(host)


def mark_failure(host: VirtualHost, step: str, err: VirtualHostError) -> None:
    """The run failed at ``step``: keep the reason, plan the retry, raise an alarm."""
    now = timezone.now()
    host.attempts += 1
    host.status = constants.STATUS_FAILED
    host.failed_step = step
    host.last_error = err.message[:4000]
    if err.retryable or err.retry_after is not None:
        host.next_attempt_at = renewal.next_attempt(now, host.attempts, err.retry_after)
    else:
        host.next_attempt_at = None  # an operator must fix something, then retry
    host.save()
    open_alarm(host, f"Virtual host {host.hostname}: {step} failed: {err.message}")


def open_alarm(host: VirtualHost, title: str) -> None:
    """Open (or update) the single alarm of this host on Modoboa's Alarms page."""
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    name = f"{ALARM_PREFIX}{host.pk}"
    with transaction.atomic():
        alarm = Alarm.objects.filter(
            internal_name=name, status=admin_constants.ALARM_OPENED
        ).first()
        if alarm is None:
            Alarm.objects.create(internal_name=name, title=title, domain=alarm_domain(host))
        elif alarm.title != title:
            alarm.title = title
            alarm.save(update_fields=["title"])


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


def close_alarm(host: VirtualHost) -> None:
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    for alarm in Alarm.objects.filter(
        internal_name=f"{ALARM_PREFIX}{host.pk}", status=admin_constants.ALARM_OPENED
    ):
        alarm.close()

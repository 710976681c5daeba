"""Observed state, written by runs only: step history, status, certificate facts, outcome.

Every write is an UPDATE of the fields a run owns (``models.OBSERVED_FIELDS``),
filtered on the host's id: a run never overwrites an admin's change made while
it ran (``enabled``), and never re-inserts a host deleted meanwhile.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone
from rq.timeouts import JobTimeoutException

from . import alarms, conf, constants, policy
from .adapters.ari import RenewalWindow
from .adapters.x509 import CertificateFacts
from .errors import AcmePaused, DesiredStateChanged, VirtualHostError, redact_for_log
from .models import OBSERVED_FIELDS, VirtualHost, VirtualHostEvent

logger = logging.getLogger("modoboa.jobs")


class Run:
    """One run for one host: records each step, and stops if the host is disabled or deleted."""

    def __init__(self, host: VirtualHost, run_id: str, kind: str) -> None:
        self.host = host
        self.run_id = run_id
        self.kind = kind
        self.current_step = ""

    @contextmanager
    def step(self, name: str, *, continued: bool = False) -> Iterator[StepResult]:
        """Time a step, log it and store it in the host's history.

        ``continued``: the step began in an earlier job of this run, which deferred its
        end (a reload shared with other hosts): its event is completed, not repeated, and
        its duration counts from its start."""
        self.current_step = name
        self._enter(name)
        result = StepResult()
        started = timezone.now()
        clock = time.monotonic()
        logger.info("virtualhost %s: %s started", self.host.hostname, name)
        try:
            yield result
        except VirtualHostError as err:
            self._event(name, constants.OUTCOME_FAILED, started, clock, err.message, continued)
            logger.warning(
                "virtualhost %s: %s failed after %.2fs: %s%s",
                self.host.hostname,
                name,
                time.monotonic() - clock,
                redact_for_log(err.message),
                # The raw text (a CA's problem document...), unless the message quotes it.
                f" (detail: {redact_for_log(err.detail)})"
                if err.detail and err.detail not in err.message
                else "",
            )
            raise
        except Exception as err:
            message = f"internal error: {err!r}"
            self._event(name, constants.OUTCOME_FAILED, started, clock, message, continued)
            raise
        outcome = constants.OUTCOME_SKIPPED if result.skipped else constants.OUTCOME_OK
        self._event(name, outcome, started, clock, result.message, continued)
        logger.info(
            "virtualhost %s: %s %s in %.2fs%s",
            self.host.hostname,
            name,
            outcome,
            time.monotonic() - clock,
            f": {result.message}" if result.message else "",
        )

    def _enter(self, step: str) -> None:
        """Show the step on the host, in the same UPDATE that checks the host is still wanted."""
        rows = VirtualHost.objects.filter(pk=self.host.pk)
        if self.kind != constants.KIND_DISABLE:
            rows = rows.filter(enabled=True)
        if rows.update(current_step=step):
            self.host.current_step = step
            return
        self.check_desired_state()  # nothing matched: it raises, saying why

    def check_desired_state(self) -> None:
        """Stop here if an admin disabled or deleted the host since the run began."""
        if self.kind == constants.KIND_DISABLE:
            return  # the disable run is the one reacting to the change
        enabled = (
            VirtualHost.objects.filter(pk=self.host.pk).values_list("enabled", flat=True).first()
        )
        if enabled is None:
            raise DesiredStateChanged(f"{self.host.hostname} was deleted", gone=True)
        if not enabled:
            raise DesiredStateChanged(f"{self.host.hostname} was disabled", gone=False)

    def _event(
        self,
        step: str,
        outcome: str,
        started: datetime.datetime,
        clock: float,
        message: str,
        continued: bool = False,
    ) -> None:
        if continued and self._complete(step, outcome, message):
            return
        try:
            VirtualHostEvent.objects.create(
                virtualhost_id=self.host.pk,
                run_id=self.run_id,
                step=step,
                outcome=outcome,
                started_at=started,
                duration=round(time.monotonic() - clock, 3),
                message=message[:4000],
            )
        except IntegrityError as err:  # the host row was deleted during the step
            raise DesiredStateChanged(f"{self.host.hostname} was deleted", gone=True) from err
        _prune(self.host)

    def _complete(self, step: str, outcome: str, message: str) -> bool:
        """Complete this run's event of ``step`` begun by an earlier job; False if none."""
        begun = (
            VirtualHostEvent.objects.filter(
                virtualhost_id=self.host.pk, run_id=self.run_id, step=step
            )
            .order_by("-id")
            .first()
        )
        if begun is None:
            return False
        duration = (timezone.now() - begun.started_at).total_seconds()
        VirtualHostEvent.objects.filter(pk=begun.pk).update(
            outcome=outcome, duration=round(duration, 3), message=message[:4000]
        )
        return True


class StepResult:
    """What a step reports: a message, and whether it was skipped as already done."""

    def __init__(self) -> None:
        self.message = ""
        self.skipped = False

    def skip(self, message: str) -> None:
        self.skipped = True
        self.message = message


def _prune(host: VirtualHost) -> None:
    stale = VirtualHostEvent.objects.filter(virtualhost_id=host.pk).values_list("id", flat=True)[
        constants.HISTORY_KEEP :
    ]
    ids = list(stale)
    if ids:
        VirtualHostEvent.objects.filter(id__in=ids).delete()


@dataclass
class Outcome:
    """How a run ended: a status, or "gone" / "disabled" when the admin changed the host."""

    status: str = ""


@contextmanager
def outcome(run: Run) -> Iterator[Outcome]:
    """Record how the run's body ended; expected failures end here, bugs go on to RQ.

    ``with recording.outcome(run) as result: result.status = ...``
    """
    result = Outcome()
    host = run.host
    try:
        yield result
    except DesiredStateChanged as err:
        result.status = constants.RESULT_GONE if err.gone else constants.STATUS_DISABLED
        logger.info(
            "virtualhost %s: %s during the %s; the run stops at %s",
            host.hostname,
            "deleted" if err.gone else "disabled",
            run.kind,
            run.current_step,
        )
    except JobTimeoutException:
        # RQ stops a job at its timeout: the host must not stay "provisioning" until the
        # stuck-host sweep; record a retryable failure, and let RQ keep the job.
        mark_failure(
            host,
            run.current_step,
            VirtualHostError(
                f"The {run.kind} took longer than its RQ job timeout and was stopped at "
                f"{run.current_step}; it will be retried. Check that the CA and the "
                "privileged worker answer in time.",
                retryable=True,
            ),
        )
        raise
    except VirtualHostError as err:
        mark_failure(host, run.current_step, err)
        logger.error(
            "virtualhost %s: %s failed at %s: %s",
            host.hostname,
            run.kind,
            run.current_step,
            redact_for_log(err.message),
        )
        paused = host.status == constants.STATUS_PAUSED
        result.status = constants.STATUS_PAUSED if paused else constants.STATUS_FAILED
    except Exception as err:
        # A bug: record what the operator needs, then let RQ keep the traceback.
        mark_failure(
            host,
            run.current_step,
            VirtualHostError(
                f"Internal error during {run.current_step}: {err!r}. See the RQ failed jobs."
            ),
        )
        raise


def _write(host: VirtualHost, *, where: Q | None = None, **changes: object) -> bool:
    """UPDATE the host's observed fields (if its row still matches ``where``); mirror them
    on ``host``. False when nothing was written: the row is gone or no longer matches."""
    unknown = set(changes) - set(OBSERVED_FIELDS)
    assert not unknown, f"runs write observed fields only, not {sorted(unknown)}"
    changes.setdefault("updated_at", timezone.now())
    rows = VirtualHost.objects.filter(pk=host.pk)
    if not rows.filter(where or Q()).update(**changes):
        return False
    for name, value in changes.items():
        setattr(host, name, value)
    return True


def fulfil_renewal_request(host: VirtualHost, before: datetime.datetime) -> None:
    """A new certificate is stored: clear an admin's "Renew now" made ``before`` then.

    The one desired-state field a run writes: it acknowledges the request, and a request
    made after ``before`` (while the run ordered) stays for the next run.
    """
    VirtualHost.objects.filter(pk=host.pk, renewal_requested_at__lte=before).update(
        renewal_requested_at=None
    )
    host.renewal_requested_at = None


def fulfil_key_rotation(host: VirtualHost, before: datetime.datetime) -> None:
    """A certificate with the next key is stored: clear a forced rotation asked ``before``."""
    VirtualHost.objects.filter(pk=host.pk, key_rotation_requested_at__lte=before).update(
        key_rotation_requested_at=None
    )
    host.key_rotation_requested_at = None


def record_tlsa_keys(host: VirtualHost, keys: dict[str, object]) -> None:
    """The TLSA digests of a mail host's keys and chain, as this run saw them."""
    _write(host, tlsa_keys=keys)


def mark_status(host: VirtualHost, status: str) -> None:
    _write(host, status=status)


def mark_success(
    host: VirtualHost,
    facts: CertificateFacts | None,
    *,
    status: str,
    threshold_days: int,
    spread: datetime.timedelta = datetime.timedelta(0),
) -> None:
    """The run succeeded: store certificate facts, plan the renewal, close the alarm."""
    changes: dict[str, object] = {
        "status": status,
        "current_step": "",
        "last_error": "",
        "failed_step": "",
        "attempts": 0,
        "failing_since": None,
        "last_success_at": timezone.now(),
        "next_attempt_at": None,
    }
    if facts is not None:
        changes.update(
            cert_serial=facts.serial,
            cert_issuer=facts.issuer[:255],
            cert_not_before=facts.not_before,
            cert_not_after=facts.not_after,
            next_attempt_at=planned_renewal(host, facts, threshold_days, spread),
        )
        changes.update(_forget_other_ari(host, facts))
    if _write(host, **changes):
        alarms.close_host_alarm(host)


def record_certificate(host: VirtualHost, facts: CertificateFacts) -> None:
    """The certificate the web site now serves, recorded before a mail host's mail steps:
    their failure must neither hide which certificate is in place nor, as ``mark_success``
    would, reset the streak of failures (its back-off and its pause)."""
    _write(
        host,
        cert_serial=facts.serial,
        cert_issuer=facts.issuer[:255],
        cert_not_before=facts.not_before,
        cert_not_after=facts.not_after,
        **_forget_other_ari(host, facts),
    )


def mark_failure(host: VirtualHost, step: str, err: VirtualHostError) -> None:
    """The run failed at ``step``: keep the reason, plan the retry, raise an alarm.

    A host failing for ``VIRTUALHOSTS_PAUSE_AFTER_DAYS`` in a row, or paused by the CA
    itself, is paused: no retry is planned until an operator retries. A certificate close to
    expiry whose renewal keeps failing gets the urgent alarm.
    """
    now = timezone.now()
    attempts = host.attempts + 1
    # The streak began at the first failure after a success (or after an operator's retry).
    failing_since = host.failing_since if host.attempts and host.failing_since else now
    # A disable run is never paused: the site must go, whatever the CA says.
    paused = host.enabled and (
        isinstance(err, AcmePaused) or policy.should_pause(now, failing_since, conf.pause_after())
    )
    if paused:
        next_attempt_at = None
        message = pause_message(host, err, failing_since, now)
    elif err.retryable or err.retry_after is not None:
        next_attempt_at = policy.next_attempt(now, attempts, err.retry_after)
        message = err.message
    else:
        next_attempt_at = None  # an operator must fix something, then retry
        message = err.message
    written = _write(
        host,
        attempts=attempts,
        failing_since=failing_since,
        status=constants.STATUS_PAUSED if paused else constants.STATUS_FAILED,
        current_step="",
        failed_step=step,
        last_error=message[:4000],
        next_attempt_at=next_attempt_at,
        updated_at=now,
    )
    if not written:
        return  # deleted meanwhile: nothing to show it on
    not_after = host.cert_not_after
    if paused:
        title = f"Virtual host {host.hostname}: {step} failed. {message}"
        alarms.open_host_alarm(host, title)
        logger.error("%s", redact_for_log(title[:2000]))
    elif not_after is not None and policy.is_urgent(now, host.cert_not_before, not_after, attempts):
        alarms.alarm_urgent(host, host.cert_not_after, now)
    else:
        alarms.open_host_alarm(host, f"Virtual host {host.hostname}: {step} failed: {err.message}")


def pause_message(
    host: VirtualHost,
    err: VirtualHostError,
    failing_since: datetime.datetime,
    now: datetime.datetime,
) -> str:
    """Why the host is paused and what the operator does about it, then the last error."""
    if isinstance(err, AcmePaused):
        return err.message  # it quotes the CA's unpause link
    served = ""
    if host.cert_not_after is not None:
        served = (
            f" The current certificate stays served until it expires "
            f"({host.cert_not_after:%Y-%m-%d %H:%M} UTC)."
        )
    return (
        f"Paused: every run has failed for {policy.format_duration(now - failing_since)} "
        f"(since {failing_since:%Y-%m-%d %H:%M} UTC), so it is no longer retried daily: each "
        "retry would spend a failed validation at the CA. Fix the cause (does the name still "
        "point to this server?), then press Retry provisioning (or Renew now)."
        f"{served} Last error: {err.message}"
    )


def mark_disabled(host: VirtualHost) -> None:
    """The disabled host's site is gone: nothing planned, nothing to alarm about."""
    done = _write(
        host,
        status=constants.STATUS_DISABLED,
        current_step="",
        next_attempt_at=None,
        last_error="",
        failed_step="",
        attempts=0,
        failing_since=None,
    )
    if done:
        alarms.close_host_alarm(host)


# -- what the renewal scan finds on disk ----------------------------------------------


def mark_unusable_file(host: VirtualHost, problem: str, now: datetime.datetime) -> None:
    """Show an unusable certificate file on the host, unless a run is busy with it."""
    message = problem[:4000]
    if host.status == constants.STATUS_FAILED and host.last_error == message:
        return
    _write(
        host,
        where=~Q(status__in=(constants.STATUS_PROVISIONING, constants.STATUS_PAUSED)),
        status=constants.STATUS_FAILED,
        failed_step=constants.STEP_RENEW,
        last_error=message,
        updated_at=now,
    )


def sync_facts(
    host: VirtualHost,
    facts: CertificateFacts,
    threshold_days: int,
    spread: datetime.timedelta = datetime.timedelta(0),
) -> None:
    """Record the certificate found on disk when the model says otherwise, and its planned
    renewal time when it changed (a new threshold or spread)."""
    planned = planned_renewal(host, facts, threshold_days, spread)
    recorded = (host.cert_serial, host.cert_not_before, host.cert_not_after)
    replan = host.attempts == 0 and host.next_attempt_at != planned
    if recorded == (facts.serial, facts.not_before, facts.not_after):
        if replan:
            _write(host, where=Q(cert_serial=host.cert_serial, attempts=0), next_attempt_at=planned)
        return
    changes: dict[str, object] = {
        "cert_serial": facts.serial,
        "cert_issuer": facts.issuer[:255],
        "cert_not_before": facts.not_before,
        "cert_not_after": facts.not_after,
    }
    if host.attempts == 0:
        changes["next_attempt_at"] = planned
    changes.update(_forget_other_ari(host, facts))
    # Conditional on what we read: a renewal finishing meanwhile wins.
    if _write(host, where=Q(cert_serial=host.cert_serial), **changes):
        logger.info(
            "virtualhost %s: recorded the certificate found on disk (serial %s, expires %s)",
            host.hostname,
            facts.serial,
            f"{facts.not_after:%Y-%m-%d %H:%M} UTC",
        )


# -- the CA's renewal information (ARI) ------------------------------------------------


def stored_ari(host: VirtualHost) -> tuple[str, datetime.datetime | None]:
    """The certificate id and renewal time stored from the CA's ARI answer."""
    return host.ari_cert_id, host.ari_renew_at


def planned_renewal(
    host: VirtualHost,
    facts: CertificateFacts,
    threshold_days: int,
    spread: datetime.timedelta = datetime.timedelta(0),
) -> datetime.datetime:
    """When this certificate is to be renewed: the stored ARI time when it is this
    certificate's, else the lifetime rule plus the host's share of the spread."""
    ari_renew_at = host.ari_renew_at if host.ari_cert_id == facts.ari_id != "" else None
    when, source = policy.planned_renewal(
        threshold_days, facts.not_before, facts.not_after, ari_renew_at
    )
    if source == policy.SOURCE_ARI:
        return when  # the CA's window spreads renewals already
    return policy.planned_renewal_at(
        threshold_days,
        facts.not_before,
        facts.not_after,
        spread=spread,
        share=policy.jitter(host.hostname, facts.serial),
    )


def _forget_other_ari(host: VirtualHost, facts: CertificateFacts) -> dict[str, object]:
    """The changes that drop an ARI answer about another certificate than ``facts``."""
    if host.ari_cert_id in ("", facts.ari_id):
        return {}
    return {
        "ari_cert_id": "",
        "ari_renew_at": None,
        "ari_recheck_at": None,
        "ari_explanation_url": "",
    }


def record_renewal_info(
    host: VirtualHost,
    facts: CertificateFacts,
    window: RenewalWindow | None,
    *,
    now: datetime.datetime,
    recheck_at: datetime.datetime,
    threshold_days: int,
) -> None:
    """Store the CA's answer for the certificate ``facts``: a renewal time chosen in its
    ``window`` (None: unusable, the lifetime rule decides), and when to ask again.

    A time chosen earlier for the same certificate is kept while it stays inside the
    window: asking again must not draw a new time each day (RFC 9773 4.2).
    """
    renew_at: datetime.datetime | None = None
    explanation = ""
    if window is not None:
        explanation = window.explanation_url[:500]
        kept = host.ari_renew_at if host.ari_cert_id == facts.ari_id else None
        if kept is not None and window.start <= kept <= window.end:
            renew_at = kept
        else:
            renew_at = policy.ari_renewal_time(now, window.start, window.end)
    changes: dict[str, object] = {
        "ari_cert_id": facts.ari_id,
        "ari_renew_at": renew_at,
        "ari_recheck_at": recheck_at,
        "ari_explanation_url": explanation,
    }
    if host.attempts == 0 and host.cert_serial == facts.serial:
        changes["next_attempt_at"] = policy.planned_renewal(
            threshold_days, facts.not_before, facts.not_after, renew_at
        )[0]
    # Conditional on the certificate: a renewal stored meanwhile has its own answer.
    _write(host, where=Q(cert_serial=host.cert_serial), **changes)

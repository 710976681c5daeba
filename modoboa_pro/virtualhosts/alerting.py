"""Alert emails: tell the people who do not look that a host or the renewal scan needs them.

``check`` compares the problems of now (``alert_rules``) with what the emails last told
(``AlertState``), sends one email per change or one digest (Django's email settings, as
Modoboa's own emails), and records what it told only once the email is sent: an SMTP
server down means the same email is tried again at the next check, never lost. Run by
the retry sweep (every 5 minutes) and the daily scan (``jobs.retry_due_virtualhosts``).
"""

from __future__ import annotations

import datetime
import logging
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import alarms, alert_rules, conf, constants
from .alert_rules import Change, HostFacts, Notified, Problem
from .models import AlertEmail, AlertState, VirtualHost

logger = logging.getLogger("modoboa.jobs")

SUBJECT_PREFIX = "[Modoboa] "
SCAN_SUBJECT = "the renewal scan"
# Where the page is, under Modoboa's web interface.
PAGE_PATH = "/admin/virtualhosts"
# Hosts that need no certificate: an alert about them is forgotten without a recovery email.
UNWATCHED = (constants.STATUS_DISABLED, constants.STATUS_HTTP_ONLY)
# Alert emails kept for the digest limit and the operator's curiosity.
EMAILS_KEEP = datetime.timedelta(days=90)

_HOST_FIELDS = (
    "id",
    "hostname",
    "enabled",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "failed_step",
    "cert_not_before",
    "cert_not_after",
    "ari_renew_at",
)


@dataclass(frozen=True)
class Report:
    """What a check did: emails sent, changes told, changes waiting for the next digest."""

    sent: int = 0
    told: int = 0
    waiting: int = 0
    skipped: str = ""  # why nothing was checked (disabled, no recipient)


def recipients(configured: str | None = None) -> list[str]:
    """The Settings page's list, else every active SuperAdmin's email."""
    if configured is None:
        configured = str(conf.param("alert_recipients") or "")
    listed = [a for a in configured.replace(";", ",").replace(" ", ",").split(",") if a]
    if listed:
        return listed
    from modoboa.core.models import User

    admins = User.objects.filter(is_superuser=True, is_active=True).exclude(email="")
    return sorted(set(admins.values_list("email", flat=True)))


def page_url() -> str:
    """The Virtual hosts page: VIRTUALHOSTS_PAGE_URL, else under the address Modoboa's web
    interface signs in from (its OAuth application), else empty."""
    configured = conf.get("VIRTUALHOSTS_PAGE_URL")
    if configured:
        return str(configured)
    from oauth2_provider.models import get_application_model

    app = get_application_model().objects.filter(name="modoboa_frontend").first()
    for uri in (app.redirect_uris.split() if app and app.redirect_uris else [])[:1]:
        base = uri.split("/login/")[0].rstrip("/")
        return base + PAGE_PATH
    return ""


def current_problems(now: datetime.datetime, threshold_days: int) -> tuple[dict, dict, bool]:
    """Every problem now (one query over the hosts), the hosts by key, the scan's state."""
    hosts = {
        alert_rules.host_key(row[0]): HostFacts(*row)
        for row in VirtualHost.objects.order_by().values_list(*_HOST_FIELDS)
    }
    problems = {
        key: problem
        for key, host in hosts.items()
        if (problem := alert_rules.host_problem(now, threshold_days, host))
    }
    stale = alarms.staleness(now)
    if stale is not None:
        key = alert_rules.SCAN_KEY
        problems[key] = Problem(key, alert_rules.KIND_SCAN_STALE, SCAN_SUBJECT, stale)
    return problems, hosts, stale is not None


def check(now: datetime.datetime | None = None, params: dict | None = None) -> Report:
    """Send the emails the changes since the last check call for.

    Cheap when nothing changed (the common case, every 5 minutes): the parameters (given by
    the sweep, read once), the hosts, the scan's staleness and the states told.
    """
    now = now or timezone.now()
    params = params if params is not None else conf.params()
    if not params["enable_alert_emails"]:
        return Report(skipped="alert emails are turned off in Settings > Virtual hosts")
    threshold = int(params["certificate_renewal_threshold"])
    problems, hosts, stale = current_problems(now, threshold)
    states = {s.key: s for s in AlertState.objects.all()}
    notified = {key: Notified(s.hostname or SCAN_SUBJECT, s.kind) for key, s in states.items()}
    recovered = {
        key
        for key, host in hosts.items()
        if host.enabled and host.status == constants.STATUS_ACTIVE
    }
    if not stale:
        recovered.add(alert_rules.SCAN_KEY)
    # Deleted, disabled, or served over HTTP only (Let's Encrypt turned off): nothing to tell.
    gone = {
        key
        for key in notified
        if key != alert_rules.SCAN_KEY
        and (key not in hosts or not hosts[key].enabled or hosts[key].status in UNWATCHED)
    }
    found, forget = alert_rules.changes(problems, notified, recovered, gone)
    if forget:
        AlertState.objects.filter(key__in=forget).delete()
    if not found:
        return Report()
    to = recipients(str(params.get("alert_recipients") or ""))
    if not to:
        logger.warning(
            "%d alert email(s) not sent: no recipient (Settings > Virtual hosts > Alert "
            "recipients) and no SuperAdmin has an email address.",
            len(found),
        )
        return Report(waiting=len(found), skipped="no recipient")
    last_digest = None
    if len(found) > alert_rules.MAX_SEPARATE_EMAILS:
        last_digest = AlertEmail.objects.filter(digest=True).aggregate(at=Max("sent_at"))["at"]
    sent = told = 0
    for batch in alert_rules.batches(found, now, last_digest):
        if not _send(batch, to, now):
            break  # the SMTP server refused: the rest waits for the next check too
        sent += 1
        told += len(batch)
    if sent:
        AlertEmail.objects.filter(sent_at__lt=now - EMAILS_KEEP).delete()
    return Report(sent=sent, told=told, waiting=len(found) - told)


def _send(batch: list[Change], to: list[str], now: datetime.datetime) -> bool:
    """Send one email about ``batch``; record what it told once it is sent."""
    digest = len(batch) > 1
    subject = SUBJECT_PREFIX + (digest_subject(batch) if digest else change_subject(batch[0]))
    link = page_url()
    body = (digest_body(batch, link) if digest else change_body(batch[0], link)) + FOOTER
    message = EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, to)
    try:
        message.send()
    except (OSError, smtplib.SMTPException) as err:
        logger.error(
            "Alert email %r not sent (%s): check Django's EMAIL_HOST and EMAIL_PORT settings; "
            "it is tried again at the next check.",
            subject,
            err,
        )
        return False
    with transaction.atomic():
        AlertEmail.objects.create(
            sent_at=now, digest=digest, subject=subject[:255], recipients=len(to)
        )
        for change in batch:
            if change.problem is None:
                AlertState.objects.filter(key=change.key).delete()
                continue
            AlertState.objects.update_or_create(
                key=change.key,
                defaults={
                    "hostname": "" if change.key == alert_rules.SCAN_KEY else change.subject,
                    "kind": change.problem.kind,
                    "reason": change.problem.reason[:4000],
                    "notified_at": now,
                },
            )
    logger.info("Alert email sent to %d recipient(s): %s", len(to), subject)
    return True


# -- the text ---------------------------------------------------------------------------

FOOTER = (
    "\n-- \nSent by Modoboa's virtual hosts (modoboa_pro): one email per change, at most one "
    "digest a day. Turn these emails off, or choose who receives them, in Settings > Virtual "
    "hosts > Alert emails.\n"
)

_HEADLINES = {
    alert_rules.KIND_FAILED: "certificate renewal or provisioning failed",
    alert_rules.KIND_PAUSED: "paused, no longer retried",
    alert_rules.KIND_EXPIRING: "certificate close to expiry and not renewed",
    alert_rules.KIND_SCAN_STALE: "not running",
    alert_rules.KIND_RECOVERED: "recovered",
}


def _utc(value: datetime.datetime | None) -> str:
    return f"{value.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC" if value else "-"


def change_subject(change: Change) -> str:
    subject = "The renewal scan" if change.key == alert_rules.SCAN_KEY else change.subject
    return f"{subject}: {_HEADLINES[change.kind]}"


def what_to_do(change: Change) -> str:
    problem = change.problem
    if problem is None:
        return "Nothing: this is fine again."
    if problem.kind == alert_rules.KIND_SCAN_STALE:
        return "See the reason above: start the scheduler and the worker it names."
    if problem.kind == alert_rules.KIND_PAUSED:
        return (
            "Fix the cause given above (does the name still point to this server?), then "
            "press Retry provisioning on the Virtual hosts page (or run `python manage.py "
            f"virtualhosts retry {problem.subject}`). Nothing is retried until then."
        )
    if problem.kind == alert_rules.KIND_EXPIRING:
        return (
            f"The certificate expires on {_utc(problem.not_after)} and should have been "
            "renewed by now. Fix the cause given above, check that the renewal scan and the "
            "RQ workers run (`python manage.py virtualhosts show "
            f"{problem.subject}`), then press Renew now on the Virtual hosts page."
        )
    return (
        "Fix the cause given above, then press Retry provisioning on the Virtual hosts page "
        f"(or run `python manage.py virtualhosts retry {problem.subject}`). Until then it is "
        "retried once a day, or not at all if the reason says an operator must act."
    )


def _section(change: Change) -> str:
    if change.problem is None:
        was = _HEADLINES.get(change.before or "", change.before or "")
        what = (
            "The renewal scan runs again."
            if change.key == alert_rules.SCAN_KEY
            else f"{change.subject} is active again (it was: {was})."
        )
        return f"What happened: {what}\n"
    served = ""
    if change.problem.not_after is not None and change.problem.kind != alert_rules.KIND_EXPIRING:
        served = f"\nIts current certificate stays served until {_utc(change.problem.not_after)}."
    return (
        f"What failed: {change_subject(change)}.{served}\n"
        f"Why: {change.problem.reason or 'see the host history on the page'}\n"
        f"What to do: {what_to_do(change)}\n"
    )


def change_body(change: Change, link: str) -> str:
    where = f"\nThe Virtual hosts page: {link}\n" if link else ""
    return _section(change) + where


def digest_subject(batch: list[Change]) -> str:
    counts: dict[str, int] = {}
    for change in batch:
        counts[change.kind] = counts.get(change.kind, 0) + 1
    parts = ", ".join(f"{n} {_HEADLINES[kind]}" for kind, n in sorted(counts.items()))
    return f"Virtual hosts: {len(batch)} changes ({parts})"


def digest_body(batch: list[Change], link: str) -> str:
    intro = (
        f"{len(batch)} virtual hosts (or the renewal scan) changed state together; "
        "one email for them all:\n\n"
    )
    sections = "\n".join(f"== {change_subject(c)}\n{_section(c)}" for c in batch)
    where = f"\nThe Virtual hosts page: {link}\n" if link else ""
    return intro + sections + where

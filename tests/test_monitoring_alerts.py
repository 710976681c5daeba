"""Alert emails, received by a real SMTP server (aiosmtpd) on loopback.

The check runs where production runs it: the retry sweep (``jobs.retry_due_virtualhosts``,
every 5 minutes, and at the end of the daily scan), against a real Redis.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from modoboa_pro.testing.servers import free_port
from modoboa_pro.virtualhosts import alerting, constants, jobs
from modoboa_pro.virtualhosts.models import AlertState, RenewalScan, VirtualHost

from .conftest import set_parameters

pytestmark = pytest.mark.monitoring

PAGE = "https://mail.example.test/admin/virtualhosts"
ADMIN_EMAIL = "admin@example.test"
DAY = datetime.timedelta(days=1)


class Inbox:
    """What the SMTP server received: each message with its envelope recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"

    def take(self) -> list[tuple[list[str], EmailMessage]]:
        with self.lock:
            taken, self.messages = self.messages, []
        return taken


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


@pytest.fixture
def inbox(smtp_server, settings, modoboa, redis_server, tmp_path) -> Inbox:
    """Django sends through the SMTP server; the admin (a SuperAdmin) has an address."""
    from modoboa.core.models import User

    controller, received = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.DEFAULT_FROM_EMAIL = "modoboa@example.test"
    settings.VIRTUALHOSTS_PAGE_URL = PAGE
    User.objects.filter(username="admin").update(email=ADMIN_EMAIL)
    set_parameters(
        enable_letsencrypt=True,
        acme_account_email="hostmaster@example.org",
        acme_account_storage_path=str(tmp_path / "acme"),
    )
    RenewalScan.objects.create(finished_at=timezone.now())
    received.take()
    return received


def sweep() -> int:
    """What the retry sweep's cron job runs; the number of alert emails it sent."""
    return jobs.retry_due_virtualhosts()["alert_emails"]


def failing(hostname: str, *, attempts: int = 4, **fields) -> VirtualHost:
    """A host whose runs fail: 4 attempts spend the 1, 10, 100 minutes backoff."""
    now = timezone.now()
    values = {
        "status": constants.STATUS_FAILED,
        "attempts": attempts,
        "failing_since": now - datetime.timedelta(hours=2),
        "next_attempt_at": now + (DAY if attempts > 3 else datetime.timedelta(minutes=10)),
        "failed_step": "order",
        "last_error": (
            f"Pre-flight (DNS): {hostname} does not exist (NXDOMAIN). Create its A and/or "
            "AAAA record pointing to this server."
        ),
    }
    values.update(fields)
    return VirtualHost.objects.create(hostname=hostname, **values)


def body(message: EmailMessage) -> str:
    return message.get_body().get_content()  # type: ignore[union-attr]


def test_failure_then_recovery_one_email_each(inbox: Inbox):
    host = failing("lost.example.test")
    failing("retrying.example.test", attempts=1)  # still in its backoff: no email yet

    assert sweep() == 1
    ((to, message),) = inbox.take()
    assert to == [ADMIN_EMAIL]  # the SuperAdmins, by default
    assert message["Subject"] == (
        "[Modoboa] lost.example.test: certificate renewal or provisioning failed"
    )
    text = body(message)
    assert "What failed: lost.example.test" in text
    assert "Why: Pre-flight (DNS): lost.example.test does not exist" in text
    assert "What to do: Fix the cause" in text and "virtualhosts retry lost.example.test" in text
    assert PAGE in text
    assert "retrying.example.test" not in text

    # Nothing new: no email, however often the sweep runs, even after one more failure.
    assert sweep() == 0
    VirtualHost.objects.filter(pk=host.pk).update(attempts=5)
    assert sweep() == 0
    assert inbox.take() == []

    # Fixed: the host is active again, one recovery email.
    now = timezone.now()
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_ACTIVE,
        attempts=0,
        last_error="",
        next_attempt_at=now + 60 * DAY,
        cert_not_before=now,
        cert_not_after=now + 90 * DAY,
    )
    assert sweep() == 1
    ((to, message),) = inbox.take()
    assert message["Subject"] == "[Modoboa] lost.example.test: recovered"
    assert "lost.example.test is active again" in body(message)
    assert sweep() == 0
    assert inbox.take() == []
    assert not AlertState.objects.exists()


def test_many_failures_together_make_one_digest_a_day(inbox: Inbox):
    names = [f"h{i:02d}.example.test" for i in range(12)]
    for name in names:
        failing(name)

    assert sweep() == 1
    ((to, message),) = inbox.take()
    assert message["Subject"] == (
        "[Modoboa] Virtual hosts: 12 changes (12 certificate renewal or provisioning failed)"
    )
    text = body(message)
    for name in names:
        assert f"What failed: {name}" in text
        assert f"Why: Pre-flight (DNS): {name} does not exist" in text
    assert sweep() == 0

    # A second wave the same day waits for the next day's digest: never a storm.
    later = [f"w{i}.example.test" for i in range(5)]
    for name in later:
        failing(name)
    report = alerting.check()
    assert (report.sent, report.waiting) == (0, 5)
    assert inbox.take() == []
    tomorrow = timezone.now() + DAY + datetime.timedelta(minutes=5)
    RenewalScan.objects.create(finished_at=tomorrow)  # the daily scan ran meanwhile
    assert alerting.check(tomorrow).sent == 1
    ((to, message),) = inbox.take()
    assert message["Subject"].startswith("[Modoboa] Virtual hosts: 5 changes")
    assert all(name in body(message) for name in later)
    assert alerting.check(tomorrow).sent == 0


def test_scan_not_running_paused_and_expiring(inbox: Inbox):
    now = timezone.now()
    RenewalScan.objects.all().delete()
    RenewalScan.objects.create(
        started_at=now - datetime.timedelta(hours=27),
        finished_at=now - datetime.timedelta(hours=27),
    )
    paused = failing(
        "paused.example.test",
        status=constants.STATUS_PAUSED,
        next_attempt_at=None,
        last_error="Paused: every run has failed for 7 day(s). Fix the cause, then press Retry.",
    )
    # 90-day certificate with 20 days left: due 10 days ago, its renewals fail.
    failing(
        "expiring.example.test",
        attempts=2,
        cert_not_before=now - 70 * DAY,
        cert_not_after=now + 20 * DAY,
    )
    VirtualHost.objects.create(
        hostname="fine.example.test",
        status=constants.STATUS_ACTIVE,
        cert_not_before=now - 10 * DAY,
        cert_not_after=now + 80 * DAY,
    )

    assert sweep() == 3  # three changes: one email each
    by_subject = {m["Subject"]: (to, body(m)) for to, m in inbox.take()}
    assert set(by_subject) == {
        "[Modoboa] The renewal scan: not running",
        "[Modoboa] paused.example.test: paused, no longer retried",
        "[Modoboa] expiring.example.test: certificate close to expiry and not renewed",
    }
    scan_text = by_subject["[Modoboa] The renewal scan: not running"][1]
    assert "has not run for more than 26 hours" in scan_text and "rqcron" in scan_text
    paused_text = by_subject["[Modoboa] paused.example.test: paused, no longer retried"][1]
    assert "Why: Paused: every run has failed" in paused_text
    assert "Nothing is retried until then" in paused_text
    expiring = by_subject[
        "[Modoboa] expiring.example.test: certificate close to expiry and not renewed"
    ][1]
    assert f"expires on {now + 20 * DAY:%Y-%m-%d}" in expiring and "Renew now" in expiring
    assert sweep() == 0

    # The scan runs again; the paused host is deleted (nothing to tell about it).
    RenewalScan.objects.create(finished_at=timezone.now())
    paused.delete()
    assert sweep() == 1
    ((to, message),) = inbox.take()
    assert message["Subject"] == "[Modoboa] The renewal scan: recovered"
    assert "The renewal scan runs again" in body(message)
    assert sweep() == 0
    assert set(AlertState.objects.values_list("hostname", flat=True)) == {"expiring.example.test"}


def test_recipients_switch_off_and_smtp_down(inbox: Inbox, smtp_server, settings):
    failing("lost.example.test")
    set_parameters(enable_alert_emails=False)
    assert sweep() == 0

    set_parameters(enable_alert_emails=True, alert_recipients="ops@example.test, noc@example.test")
    settings.EMAIL_PORT = free_port()  # nobody listens: the email waits for the next check
    report = alerting.check()
    assert (report.sent, report.waiting) == (0, 1)
    assert not AlertState.objects.exists()

    settings.EMAIL_PORT = smtp_server[0].port  # back: it is sent
    assert sweep() == 1
    ((to, message),) = inbox.take()
    assert sorted(to) == ["noc@example.test", "ops@example.test"]
    assert sweep() == 0


def test_settings_page_validates_the_recipients(modoboa, client):
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.get(username="admin"))
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    url = "/api/v2/parameters/global/virtualhosts/"
    structure = client.get("/api/v2/parameters/global/structure/?app=virtualhosts", **auth)
    assert structure.status_code == 200, structure.content
    assert "Alert recipients" in structure.content.decode()
    section = client.get(url, **auth).json()
    assert section["params"]["enable_alert_emails"] is True
    assert section["params"]["alert_recipients"] == ""

    values = {
        "enable_letsencrypt": False,
        "acme_account_email": "",
        "acme_account_storage_path": "/var/lib/modoboa/acme",
        "certificate_renewal_threshold": 30,
        "enable_alert_emails": True,
    }
    refused = client.put(
        url,
        {**values, "alert_recipients": "ops@example.test, nobody@"},
        content_type="application/json",
        **auth,
    )
    assert refused.status_code == 400
    assert "nobody@ is not an email address" in str(refused.json()["alert_recipients"])

    saved = client.put(
        url,
        {**values, "alert_recipients": "ops@example.test;noc@example.test"},
        content_type="application/json",
        **auth,
    )
    assert saved.status_code == 200, saved.content
    assert alerting.recipients() == ["ops@example.test", "noc@example.test"]

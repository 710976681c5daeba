"""Everything a user reads is relative to the certificate's lifetime.

A 6-day certificate with 3 days left is fine (half its life: its renewal is planned); a
90-day one with 3 days left is an emergency. The same two hosts through the alarm, the
"Modoboa Pro" health line, the command line (text, colours, exit code) and the API.
"""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.core.management.color import color_style
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, health, policy, presenters, recording
from modoboa_pro.virtualhosts.errors import StorageError
from modoboa_pro.virtualhosts.management.commands import virtualhosts as command
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost

from .conftest import set_parameters

DAY = datetime.timedelta(days=1)
URL = "/api/v2/virtualhosts/"


def certified(hostname: str, *, lifetime_days: float, left_days: float, **kw) -> VirtualHost:
    now = timezone.now()
    not_after = now + left_days * DAY
    return VirtualHost.objects.create(
        hostname=hostname,
        status=constants.STATUS_ACTIVE,
        cert_serial="5e41a1",
        cert_issuer="Pebble Intermediate CA 1c2f",
        cert_not_before=not_after - lifetime_days * DAY,
        cert_not_after=not_after,
        **kw,
    )


def run(*args: str) -> tuple[int, str, str]:
    out = io.StringIO()
    try:
        call_command("virtualhosts", *args, stdout=out)
    except CommandError as err:
        return err.returncode, out.getvalue(), str(err)
    return 0, out.getvalue(), ""


@pytest.fixture
def configured(modoboa, tmp_path) -> None:
    set_parameters(
        enable_letsencrypt=True,
        acme_account_email="hostmaster@example.org",
        acme_account_storage_path=str(tmp_path / "acme"),
        certificate_renewal_threshold=30,
    )
    RenewalScan.objects.create(started_at=timezone.now(), finished_at=timezone.now())


def host_alarm(host: VirtualHost) -> str | None:
    from modoboa.admin import constants as admin_constants
    from modoboa.admin.models import Alarm

    alarm = Alarm.objects.filter(
        internal_name=f"virtualhost:{host.pk}", status=admin_constants.ALARM_OPENED
    ).first()
    return alarm.title if alarm else None


def test_a_failing_renewal_is_urgent_for_ninety_days_not_for_six(configured):
    six = certified("six.example.test", lifetime_days=6, left_days=3)
    ninety = certified("ninety.example.test", lifetime_days=90, left_days=3)
    for host in (six, ninety):
        recording.mark_failure(
            host, constants.STEP_ORDER, StorageError("disk full", retryable=True)
        )
    assert host_alarm(six) == "Virtual host six.example.test: order failed: disk full"
    urgent = host_alarm(ninety)
    assert urgent is not None
    assert urgent.startswith(
        "Virtual host ninety.example.test: the certificate expires in 2 day(s)"
    )
    assert "its renewal keeps failing (1 attempt(s)): disk full" in urgent
    # The 6-day certificate becomes urgent under a sixth of its lifetime: 1 day left.
    not_after = timezone.now() + 0.9 * DAY
    VirtualHost.objects.filter(pk=six.pk).update(
        cert_not_before=not_after - 6 * DAY, cert_not_after=not_after
    )
    six.refresh_from_db()
    recording.mark_failure(six, constants.STEP_ORDER, StorageError("disk full", retryable=True))
    assert "six.example.test: the certificate expires in 21 hour(s)" in (host_alarm(six) or "")


def test_the_health_line_is_fine_for_six_days_and_an_error_for_ninety(configured):
    certified("six.example.test", lifetime_days=6, left_days=3)
    assert health.summary(VirtualHost.objects.all(), 30)["health"] == {
        "color": health.SUCCESS,
        "text": "1 host, certificate valid",
    }
    certified("ninety.example.test", lifetime_days=90, left_days=3)
    data = health.summary(VirtualHost.objects.all(), 30)
    assert (data["expiring"], data["overdue"], data["expired"]) == (1, 1, 0)
    assert data["health"] == {"color": health.ERROR, "text": "1 certificate close to expiry"}
    # A 90-day certificate overdue but with more than a sixth left: a warning only.
    VirtualHost.objects.filter(hostname="ninety.example.test").update(
        cert_not_after=timezone.now() + 20 * DAY,
        cert_not_before=timezone.now() - 70 * DAY,
    )
    data = health.summary(VirtualHost.objects.all(), 30)
    assert data["health"] == {"color": health.WARNING, "text": "1 certificate overdue for renewal"}


def test_the_command_line_says_and_colours_it(configured):
    planned = timezone.now() + datetime.timedelta(hours=3)
    six = certified("six.example.test", lifetime_days=6, left_days=3, next_attempt_at=planned)
    code, out, message = run("list")
    assert code == command.EXIT_OK, message
    row = next(line for line in out.splitlines() if line.startswith("six.example.test"))
    assert " 2d due " in row  # due: its renewal is planned, nothing to do
    assert f" renewal {planned.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC " in row

    certified("ninety.example.test", lifetime_days=90, left_days=3)
    code, out, message = run("list")
    assert code == command.EXIT_OVERDUE
    row = next(line for line in out.splitlines() if line.startswith("ninety.example.test"))
    assert " 2d expiring " in row
    assert "ninety.example.test (certificate overdue for renewal (2 day(s) left of 90 day(s)))" in (
        message
    )
    assert "six.example.test" not in message

    # Colours in a terminal: the state decides, not the days (both have 2 full days left).
    code, out, _ = run("--force-color", "list")
    style = color_style(force_color=True)
    lines = {line.split()[0]: line for line in out.splitlines() if ".example.test" in line}
    assert style.SUCCESS("2d due") in lines["six.example.test"]
    assert style.ERROR("2d expiring") in lines["ninety.example.test"]

    code, out, _ = run("show", "six.example.test")
    assert "(2d due)" in out
    due = six.cert_not_after - 3 * DAY
    assert f"Renewal due:   {due.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC" in out


def test_the_api_gives_the_state_and_the_planned_time(world):
    now = timezone.now()
    VirtualHost.objects.filter(pk=world.mine.pk).update(
        status=constants.STATUS_ACTIVE,
        cert_serial="5e41a1",
        cert_not_before=now - 3 * DAY,
        cert_not_after=now + 3 * DAY,
        next_attempt_at=now + DAY,
    )
    VirtualHost.objects.filter(pk=world.foreign.pk).update(
        status=constants.STATUS_ACTIVE,
        cert_serial="5e41a2",
        cert_not_before=now - 87 * DAY,
        cert_not_after=now + 3 * DAY,
    )
    admin = world.api("SuperAdmins")
    six = admin.get(f"{URL}{world.mine.pk}/").json()
    assert six["certificate"]["state"] == policy.STATE_DUE
    assert six["certificate"]["lifetime_left"] == pytest.approx(0.5, abs=0.01)
    assert (six["next_action"], six["next_attempt_at"][:16]) == (
        "renewal",
        f"{now + DAY:%Y-%m-%dT%H:%M}",
    )
    ninety = admin.get(f"{URL}{world.foreign.pk}/").json()
    assert ninety["certificate"]["state"] == policy.STATE_EXPIRING
    assert ninety["certificate"]["renewal_due_at"][:10] == f"{now - 27 * DAY:%Y-%m-%d}"
    summary = admin.get(URL + "summary/").json()
    assert summary["expiring"] == 1
    assert summary["health"]["color"] == health.ERROR
    # The listing reads the threshold once, and gives the same states.
    listed = admin.get(URL).json()["results"]
    states = {h["hostname"]: h["certificate"]["state"] for h in listed if h["certificate"]}
    assert states == {"www.example.test": "due", "www.other.test": "expiring"}
    assert presenters.next_action(VirtualHost.objects.get(pk=world.mine.pk)) == "renewal"

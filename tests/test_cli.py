"""`manage.py virtualhosts`: output, exit codes, actions, the scan preview."""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from modoboa_pro.testing import pki
from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.adapters import files, storage
from modoboa_pro.virtualhosts.management.commands import virtualhosts as command
from modoboa_pro.virtualhosts.models import VirtualHost, VirtualHostEvent

from .conftest import set_parameters

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[int, str, str]:
    """Call the command in-process; return (exit code, stdout, CommandError message)."""
    out = io.StringIO()
    try:
        call_command("virtualhosts", *args, stdout=out)
    except CommandError as err:
        return err.returncode, out.getvalue(), str(err)
    return 0, out.getvalue(), ""


def active(hostname: str, *, left: datetime.timedelta, lifetime=datetime.timedelta(days=90), **kw):
    now = timezone.now()
    return VirtualHost.objects.create(
        hostname=hostname,
        status=constants.STATUS_ACTIVE,
        cert_serial="5e41a1",
        cert_issuer="Pebble Intermediate CA 1c2f",
        cert_not_before=now + left - lifetime,
        cert_not_after=now + left,
        next_attempt_at=now + left - datetime.timedelta(days=30),
        last_success_at=now - datetime.timedelta(days=1),
        **kw,
    )


def failed(hostname: str) -> VirtualHost:
    return VirtualHost.objects.create(
        hostname=hostname,
        status=constants.STATUS_FAILED,
        failed_step=constants.STEP_ORDER,
        attempts=2,
        last_error="The CA could not resolve bad.example.test (NXDOMAIN): check its DNS records.",
        next_attempt_at=timezone.now() + datetime.timedelta(minutes=10),
    )


@pytest.fixture
def configured(modoboa, tmp_path) -> Path:
    root = tmp_path / "acme"
    set_parameters(
        enable_letsencrypt=True,
        acme_account_email="hostmaster@example.org",
        acme_account_storage_path=str(root),
        certificate_renewal_threshold=30,
    )
    return root


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run what a command scheduled on commit (the test's transaction never commits)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def queued() -> list[tuple[str, tuple]]:
    import django_rq

    queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
    return [(job.func_name.rsplit(".", 1)[-1], job.args) for job in queue.get_jobs()]


# -- list -------------------------------------------------------------------------


def test_list_table_when_all_is_fine(configured):
    active("www.example.test", left=datetime.timedelta(days=60, hours=1))
    VirtualHost.objects.create(hostname="new.example.test")
    code, out, _ = run("list")
    assert code == command.EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == [
        "HOSTNAME",
        "STATUS",
        "EXPIRES",
        "IN",
        "ISSUER",
        "NEXT",
        "LAST",
        "ERROR",
    ]
    new, www = lines[2], lines[3]
    assert new.split()[:3] == ["new.example.test", "pending", "-"]
    assert www.split()[:3] == ["www.example.test", "active", "60d"]
    assert "Pebble Intermediate CA 1c2f" in www
    assert "renewal 20" in www  # the planned renewal's date


def test_list_exits_3_when_a_host_failed(configured):
    active("www.example.test", left=datetime.timedelta(days=60))
    failed("bad.example.test")
    code, out, message = run("list")
    assert code == command.EXIT_FAILED
    row = next(line for line in out.splitlines() if line.startswith("bad.example.test"))
    assert "failed" in row and "retry 20" in row
    assert "The CA could not resolve bad.example.test" in row
    assert "bad.example.test (failed at order: The CA could not resolve" in message


def test_list_exits_4_when_a_certificate_is_overdue_or_expired(configured):
    failed("bad.example.test")
    # Due 25 days ago (5 days left of 90): the renewals are not happening.
    active("late.example.test", left=datetime.timedelta(days=5))
    code, out, message = run("list")
    assert code == command.EXIT_OVERDUE
    overdue = "late.example.test (certificate overdue for renewal (4 day(s) left of 90 day(s)))"
    assert overdue in message

    VirtualHost.objects.filter(hostname="late.example.test").delete()
    active("gone.example.test", left=-datetime.timedelta(hours=3))
    code, out, message = run("list")
    assert code == command.EXIT_OVERDUE
    assert "expired" in next(line for line in out.splitlines() if line.startswith("gone."))
    assert "gone.example.test (certificate expired on" in message


def test_due_but_not_yet_overdue_and_disabled_hosts_are_fine(configured):
    # Due since yesterday: tonight's scan renews it; not an alert yet.
    active("due.example.test", left=datetime.timedelta(days=29))
    # A disabled host's old certificate is nobody's emergency.
    active("off.example.test", left=-datetime.timedelta(days=3), enabled=False)
    assert run("list")[0] == command.EXIT_OK


def test_list_json(configured):
    active("www.example.test", left=datetime.timedelta(days=60, hours=1))
    failed("bad.example.test")
    code, out, _ = run("list", "--json")
    assert code == command.EXIT_FAILED
    data = {h["hostname"]: h for h in json.loads(out)}
    www = data["www.example.test"]
    assert www["status"] == "active"
    assert www["certificate"]["days_left"] == 60
    assert www["certificate"]["issuer"] == "Pebble Intermediate CA 1c2f"
    assert www["next_action"] == "renewal" and www["overdue"] is False
    bad = data["bad.example.test"]
    assert (bad["status"], bad["failed_step"], bad["next_action"]) == ("failed", "order", "retry")
    assert bad["certificate"] is None
    assert "history" not in bad


def test_list_filters_by_status(configured):
    active("www.example.test", left=datetime.timedelta(days=60))
    failed("bad.example.test")
    code, out, _ = run("list", "--status", "active")
    assert code == command.EXIT_OK
    assert "bad.example.test" not in out and "www.example.test" in out


def test_list_without_hosts(configured):
    assert run("list") == (0, "No virtual hosts.\n", "")


# -- show -------------------------------------------------------------------------


def test_show_everything_with_history(configured):
    host = active("www.example.test", left=datetime.timedelta(days=60, hours=1))
    for step, outcome, message in (
        (constants.STEP_HTTP_SITE, "ok", "HTTP-only site is served"),
        (constants.STEP_ORDER, "ok", "certificate issued (no certificate yet)"),
    ):
        VirtualHostEvent.objects.create(
            virtualhost=host, step=step, outcome=outcome, duration=0.42, message=message
        )
    code, out, _ = run("show", "WWW.Example.Test")
    assert code == command.EXIT_OK
    assert "Hostname:        www.example.test" in out
    assert "Status:          active" in out
    assert "Certificate:     serial 5e41a1" in out
    assert "  Issuer:        Pebble Intermediate CA 1c2f" in out
    assert "(60d)" in out
    history = out.split("History (newest first):")[1].strip().splitlines()
    assert "order" in history[0] and "certificate issued" in history[0] and "0.42s" in history[0]
    assert "http_site" in history[1]

    code, out, _ = run("show", "www.example.test", "--json")
    data = json.loads(out)
    assert [e["step"] for e in data["history"]] == ["order", "http_site"]
    assert data["renewal_due_at"]


def test_show_a_failed_host_exits_3(configured):
    failed("bad.example.test")
    code, out, message = run("show", "bad.example.test")
    assert code == command.EXIT_FAILED
    assert "Last error:      The CA could not resolve" in out
    assert "Failed step:     order" in out
    assert "(no runs yet)" in out


def test_unknown_host_exits_1(configured):
    for action in ("show", "retry", "renew", "remove", "enable", "disable"):
        code, _, message = run(action, "nope.example.test")
        assert code == command.EXIT_ERROR
        assert "No virtual host named nope.example.test" in message


# -- actions ------------------------------------------------------------------------


def test_retry_and_renew_enqueue_and_refuse_while_busy(configured, redis_server, commit):
    host = failed("bad.example.test")
    with commit():
        code, out, _ = run("retry", "bad.example.test")
    assert code == 0 and "Provisioning of bad.example.test queued" in out
    assert queued() == [("provision_virtualhost", (host.pk,))]
    host.refresh_from_db()
    assert host.status == constants.STATUS_PENDING

    for action in ("retry", "renew"):
        code, _, message = run(action, "bad.example.test")
        assert code == command.EXIT_ERROR
        assert "already in progress" in message
    assert len(queued()) == 1

    other = active("www.example.test", left=datetime.timedelta(days=60))
    with commit():
        code, out, _ = run("renew", "www.example.test")
    assert code == 0 and "Renewal of www.example.test queued" in out
    assert ("renew_virtualhost", (other.pk, True)) in queued()


def test_actions_explain_configuration_problems(configured, redis_server):
    active("www.example.test", left=datetime.timedelta(days=60))
    set_parameters(enable_letsencrypt=False)
    code, _, message = run("renew", "www.example.test")
    assert code == command.EXIT_ERROR and "Let's Encrypt is disabled" in message
    set_parameters(enable_letsencrypt=True, acme_account_email="")
    code, _, message = run("retry", "www.example.test")
    assert code == command.EXIT_ERROR and "ACME account email" in message
    code, _, message = run("add", "new.example.test")
    assert code == command.EXIT_ERROR and "ACME account email" in message
    assert not VirtualHost.objects.filter(hostname="new.example.test").exists()
    assert queued() == []


def test_add_enable_disable_remove(configured, redis_server, commit):
    from modoboa.admin.models import Domain

    Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    with commit():
        code, out, _ = run("add", "Shop.Example.Test", "--domain", "example.test")
    assert code == 0 and "Created shop.example.test; provisioning queued." in out
    host = VirtualHost.objects.get(hostname="shop.example.test")
    assert host.domain is not None and host.domain.name == "example.test"
    assert [f for f, _ in queued()] == ["provision_virtualhost"]

    code, _, message = run("add", "shop.example.test")
    assert code == 1 and "already exists" in message
    code, _, message = run("add", "bad host.example.test")
    assert code == command.EXIT_USAGE and "remove space" in message
    code, _, message = run("add", "x.example.test", "--domain", "nope.test")
    assert code == 1 and "No Modoboa domain named nope.test" in message

    with commit():
        assert run("disable", "shop.example.test")[0] == 0
    host.refresh_from_db()
    assert host.enabled is False
    with commit():
        assert run("enable", "shop.example.test")[0] == 0
    host.refresh_from_db()
    assert host.enabled is True
    with commit():
        code, out, _ = run("remove", "shop.example.test")
    assert code == 0 and "Deleted shop.example.test" in out
    assert not VirtualHost.objects.filter(hostname="shop.example.test").exists()
    assert "remove_virtualhost" in [f for f, _ in queued()]


# -- scan ---------------------------------------------------------------------------


def install_certificate(root: Path, hostname: str, left: datetime.timedelta) -> None:
    not_before, not_after = pki.validity(lifetime=datetime.timedelta(days=90), remaining=left)
    fullchain, key = pki.make_chain_pem([hostname], not_before=not_before, not_after=not_after)
    files.ensure_dir(root, constants.STORAGE_ROOT_MODE)
    storage.write_certificate_pair(root, hostname, fullchain, key)


@pytest.fixture
def scan_hosts(configured: Path) -> Path:
    """A due host, a fresh one, one without certificate, a disabled due one, a broken file."""
    for name, left in (("due", 10), ("fresh", 70), ("off", 3)):
        VirtualHost.objects.create(hostname=f"{name}.example.test", enabled=name != "off")
        install_certificate(configured, f"{name}.example.test", datetime.timedelta(days=left))
    VirtualHost.objects.create(hostname="new.example.test")
    VirtualHost.objects.create(hostname="broken.example.test")
    broken = configured / "certs" / "broken.example.test"
    broken.mkdir(parents=True)
    (broken / "fullchain.pem").write_text("not a certificate")
    return configured


def test_scan_dry_run_says_what_it_would_do_and_enqueues_nothing(scan_hosts, redis_server):
    code, out, _ = run("scan", "--dry-run")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert "would renew" in rows["due.example.test"]
    assert "9 day(s) left" in rows["due.example.test"]
    assert "skip" in rows["fresh.example.test"] and "not due until" in rows["fresh.example.test"]
    assert "no certificate yet" in rows["new.example.test"]
    assert "disabled" in rows["off.example.test"]
    # An unusable file is replaced by a new order, like the scan does.
    assert "would renew" in rows["broken.example.test"]
    assert "certificate unusable" in rows["broken.example.test"]
    assert "2 of 5 host(s) due for renewal" in out and "nothing enqueued (dry run)" in out
    assert queued() == []

    code, out, _ = run("scan", "--dry-run", "--json")
    plan = {d["hostname"]: d for d in json.loads(out)}
    assert {n for n, d in plan.items() if d["action"] == "renew"} == {
        "due.example.test",
        "broken.example.test",
    }
    assert queued() == []


def test_scan_enqueues_the_due_renewals(scan_hosts, redis_server, commit):
    with commit():
        code, out, _ = run("scan")
    assert code == 0
    renewed = {args[0] for func, args in queued() if func.startswith("renew_")}
    due = VirtualHost.objects.get(hostname="due.example.test")
    assert due.pk in renewed
    for name in ("fresh", "off", "new"):
        assert VirtualHost.objects.get(hostname=f"{name}.example.test").pk not in renewed
    assert out.startswith("Renewal scan: ") and "2 due" in out  # the unusable file too


# -- a real process, as cron or monitoring runs it ------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_subprocess"}
    return subprocess.run(
        [sys.executable, "-m", "django", "virtualhosts", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_subprocess_list_json_and_exit_codes(transactional_db, configured):
    active("www.example.test", left=datetime.timedelta(days=60, hours=1))
    result = manage("list", "--json")
    assert result.returncode == 0, result.stderr
    assert [h["hostname"] for h in json.loads(result.stdout)] == ["www.example.test"]

    failed("bad.example.test")
    result = manage("list", "--json")
    assert result.returncode == command.EXIT_FAILED
    assert {h["hostname"] for h in json.loads(result.stdout)} == {
        "bad.example.test",
        "www.example.test",
    }
    assert "bad.example.test (failed at order" in result.stderr

    result = manage("show", "nope.example.test")
    assert result.returncode == command.EXIT_ERROR
    assert "No virtual host named nope.example.test" in result.stderr


def test_subprocess_usage(transactional_db):
    result = manage("--help")
    assert result.returncode == 0
    assert "scan" in result.stdout and "Exit codes" in result.stdout
    result = manage("frobnicate")
    assert result.returncode == command.EXIT_USAGE
    assert "invalid choice" in result.stderr
    result = manage("show")
    assert result.returncode == command.EXIT_USAGE


def test_scan_dry_run_respects_a_failed_renewal_backoff(configured, redis_server):
    host = VirtualHost.objects.create(
        hostname="due.example.test",
        attempts=2,
        status=constants.STATUS_FAILED,
        next_attempt_at=timezone.now() + datetime.timedelta(minutes=10),
    )
    install_certificate(configured, host.hostname, datetime.timedelta(days=10))
    code, out, _ = run("scan", "--dry-run", "--json")
    (decision,) = json.loads(out)
    assert decision["action"] == "skip" and "next try after" in decision["reason"]
    assert queued() == []


def test_list_warns_and_exits_5_when_the_renewal_scan_is_not_running(configured):
    """Certificates must never expire silently: a scan missing for 26 h is an error."""
    from modoboa_pro.virtualhosts.models import RenewalScan

    host = active("www.example.test", left=datetime.timedelta(days=60))
    VirtualHost.objects.filter(pk=host.pk).update(
        created_at=timezone.now() - datetime.timedelta(days=3)
    )
    code, out, message = run("list")
    assert code == command.EXIT_SCAN_STALE
    assert "has not run for more than 26 hours (it has never run)" in message
    assert "rqcron" in message
    assert "Renewal scan: has not run yet." in out

    RenewalScan.objects.create(
        started_at=timezone.now(), finished_at=timezone.now(), summary="1 enabled host(s) seen"
    )
    code, out, _ = run("list")
    assert code == command.EXIT_OK
    assert "Renewal scan: last run" in out and "1 enabled host(s) seen" in out


def test_redis_down_the_cli_says_it_in_one_line_and_changes_nothing(configured, redis_down):
    failed("bad.example.test")
    VirtualHost.objects.create(hostname="www.example.test", status=constants.STATUS_ACTIVE)
    before = list(VirtualHost.objects.order_by("pk").values_list("hostname", "enabled", "status"))
    for args in (
        ("retry", "bad.example.test"),
        ("renew", "www.example.test"),
        ("add", "new.example.test"),
        ("disable", "www.example.test"),
        ("remove", "www.example.test"),
    ):
        code, _, message = run(*args)
        assert code == 1, args
        assert "Cannot reach Redis" in message and "\n" not in message, (args, message)
    after = list(VirtualHost.objects.order_by("pk").values_list("hostname", "enabled", "status"))
    assert after == before
    # Reading needs no Redis.
    code, out, _ = run("show", "www.example.test")
    assert "www.example.test" in out


# -- bad input: exit 2 and one line, never a traceback -----------------------------------

BAD_HOSTNAMES = [
    ("bad host.example.test", "remove space"),
    ("*.example.test", "Wildcard certificates are not supported"),
    ("a\u200db.example.test", "U+200D ZERO WIDTH JOINER"),
    ("a\nb.example.test", "U+000A LINE FEED"),
    ("xn--0.example.test", "not valid Punycode"),
    ("ab--cd.example.test", "reserves for encoded labels"),
    (".".join(["x" * 60] * 5), "at most 253"),
    ("localhost", "not fully qualified"),
    ("[::1]", "An IP address cannot be a virtual host"),
    ("../../etc/passwd", "remove '/'"),
    ("", "Enter a hostname"),
]
HOST_ACTIONS = ("show", "retry", "renew", "remove", "enable", "disable", "add")


def one_printable_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), message
    assert message.isprintable(), repr(message)


@pytest.mark.parametrize("action", HOST_ACTIONS)
def test_every_host_action_refuses_a_bad_hostname_with_exit_2(configured, redis_server, action):
    active("www.example.test", left=datetime.timedelta(days=60))
    for hostname, fragment in BAD_HOSTNAMES:
        code, out, message = run(action, hostname)
        assert code == command.EXIT_USAGE, (hostname, message)
        assert fragment in message, message
        one_printable_line(message)
        assert out == ""
    assert list(VirtualHost.objects.values_list("hostname", "enabled")) == [
        ("www.example.test", True)
    ]
    assert queued() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("list", "--status", "bogus"), "argument --status: invalid choice: 'bogus'"),
        (("list", "extra"), "unrecognized arguments: extra"),
        (("show",), "the following arguments are required: hostname"),
        (("show", "www.example.test", "other.example.test"), "unrecognized arguments"),
        (("show", "www.example.test", "--jsn"), "unrecognized arguments: --jsn"),
        (("scan", "--dry-run=yes"), "ignored explicit argument 'yes'"),
        (("scan", "now"), "unrecognized arguments: now"),
        (("add",), "the following arguments are required: hostname"),
        (("add", "new.example.test", "--domain"), "expected one argument"),
        (("add", "new.example.test", "--disabled=no"), "ignored explicit argument 'no'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        ((), "the following arguments are required: ACTION"),
    ],
)
def test_bad_options_exit_2_with_one_line(configured, args, fragment):
    code, out, message = run(*args)
    assert code == command.EXIT_USAGE, message
    assert fragment in message, message
    one_printable_line(message)
    assert out == "" and not VirtualHost.objects.exists()


@pytest.mark.parametrize("action", HOST_ACTIONS)
def test_every_host_action_needs_exactly_one_hostname(configured, action):
    for args, fragment in [
        ((action,), "the following arguments are required: hostname"),
        ((action, "a.example.test", "b.example.test"), "unrecognized arguments: b.example.test"),
        ((action, "a.example.test", "--force"), "unrecognized arguments: --force"),
    ]:
        code, out, message = run(*args)
        assert code == command.EXIT_USAGE and fragment in message, message
        one_printable_line(message)
        assert out == ""


def test_add_with_a_bad_domain_option(configured, redis_server):
    from modoboa.admin.models import Domain

    Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    code, _, message = run("add", "new.example.test", "--domain", "bad domain!")
    assert code == command.EXIT_USAGE and message.startswith("--domain: ")
    one_printable_line(message)
    code, _, message = run("add", "new.example.test", "--domain", "")
    assert code == command.EXIT_USAGE and "--domain: Enter a hostname" in message
    # A valid name that is no domain of this Modoboa: the command failed (1), usage was fine.
    code, _, message = run("add", "new.example.test", "--domain", "Nope.Test.")
    assert code == command.EXIT_ERROR and message == "No Modoboa domain named nope.test."
    code, _, _ = run("add", "new.example.test", "--domain", "EXAMPLE.test")
    assert code == 0
    assert VirtualHost.objects.get(hostname="new.example.test").domain.name == "example.test"


def test_a_host_saved_before_the_rules_tightened_can_still_be_shown_and_removed(
    configured, redis_server, commit
):
    host = VirtualHost.objects.create(hostname="old.example.test")
    VirtualHost.objects.filter(pk=host.pk).update(hostname="ab--cd.example.test")
    code, out, _ = run("show", "ab--cd.example.test")
    assert code == 0 and "Hostname:        ab--cd.example.test" in out
    with commit():
        assert run("remove", "ab--cd.example.test")[0] == 0
    assert not VirtualHost.objects.exists()


def test_subprocess_bad_input_is_one_line_on_stderr_and_exit_2(transactional_db, configured):
    for args, fragment in [
        (("show", "a\u200db.example.test"), "U+200D ZERO WIDTH JOINER"),
        (("add", "*.example.test"), "Wildcard certificates are not supported"),
        (("list", "--status", "bogus"), "invalid choice: 'bogus'"),
        (("add", "x.example.test", "--domain", "a b"), "--domain: A hostname may contain"),
        (("retry",), "the following arguments are required: hostname"),
    ]:
        result = manage(*args)
        assert result.returncode == command.EXIT_USAGE, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
        assert result.stdout == ""

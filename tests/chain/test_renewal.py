"""Automatic renewal end to end: the scan, per-host renewals, failures, coalesced reloads.

Hosts stand in with crafted certificates (e.g. a 90-day certificate with 5 days
left) already served by nginx; renewals go through real Redis, Pebble and nginx.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import django_rq
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts import alarms, conf, constants, jobs, queueing, recording
from modoboa_pro.virtualhosts.adapters import nginx, storage, tls, x509
from modoboa_pro.virtualhosts.adapters.files import ensure_dir
from modoboa_pro.virtualhosts.checks import check_renewal_scan
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost
from modoboa_pro.virtualhosts.rendering import render_https

from ..conftest import Chain

pytestmark = pytest.mark.chain

DAY = datetime.timedelta(days=1)


def stand_in(
    chain: Chain,
    hostname: str,
    *,
    lifetime: float = 90,
    remaining: float = 5,
    enabled: bool = True,
    files: bool = True,
    site: bool = True,
) -> VirtualHost:
    """A host that was provisioned earlier: its pair on disk, its HTTPS site, its facts.

    Created with bulk_create so that no provisioning job is enqueued for it.
    """
    host = VirtualHost(hostname=hostname, enabled=enabled, status=constants.STATUS_ACTIVE)
    if files:
        not_before, not_after = validity(lifetime=lifetime * DAY, remaining=remaining * DAY)
        fullchain, key = make_chain_pem([hostname], not_before=not_before, not_after=not_after)
        storage.write_certificate_pair(chain.storage, hostname, fullchain, key)
        facts = x509.parse_leaf(fullchain)
        host.cert_serial = facts.serial
        host.cert_issuer = facts.issuer
        host.cert_not_before, host.cert_not_after = facts.not_before, facts.not_after
        # Its planned renewal, as the run that issued it recorded it.
        host.next_attempt_at = recording.planned_renewal(
            host, facts, 30, conf.renewal_spread()
        )
    else:
        host.status = constants.STATUS_PENDING
    if site:
        settings = jobs.read_settings()
        ensure_dir(settings.storage_root, constants.STORAGE_ROOT_MODE)
        ensure_dir(settings.webroot, constants.WEBROOT_DIR_MODE)
        nginx.write_site(settings.conf_dir, hostname, render_https(settings.site_context(hostname)))
    return VirtualHost.objects.bulk_create([host])[0]


def served_serial(chain: Chain, hostname: str) -> str:
    return tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, hostname).serial


def queued_renewals() -> list[str]:
    queue = django_rq.get_queue("modoboa")
    return sorted(j for j in queue.get_job_ids() if j.startswith("virtualhosts-renew-"))


def renew_id(host: VirtualHost) -> str:
    return queueing.job_id(queueing.RENEW, host.pk)


def jobs_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modoboa.jobs"]


def in_threads(func, count: int) -> list:
    """Run ``func`` ``count`` times at once, as that many workers or schedulers would."""
    barrier = threading.Barrier(count)

    def call(_: int):
        barrier.wait()
        try:
            return func()
        finally:
            connection.close()  # each thread has its own database connection

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def test_scan_renews_exactly_the_due_hosts(chain: Chain, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    due = stand_in(chain, "due.example.test", lifetime=90, remaining=5)
    due45 = stand_in(chain, "due45.example.test", lifetime=45, remaining=20)  # cap: 22.5 days
    fresh = stand_in(chain, "fresh.example.test", lifetime=90, remaining=60)
    short = stand_in(chain, "short.example.test", lifetime=6, remaining=5)  # cap: 3 days
    disabled = stand_in(chain, "off.example.test", remaining=2, enabled=False, site=False)
    stand_in(chain, "new.example.test", files=False, site=False)
    chain.nginx.reload()
    before = {h.hostname: served_serial(chain, h.hostname) for h in (due, due45, fresh, short)}

    result = jobs.check_certificate_renewals()
    assert sorted(result["enqueued"]) == ["due.example.test", "due45.example.test"]
    assert queued_renewals() == sorted([renew_id(due), renew_id(due45)])
    messages = jobs_messages(caplog)
    assert "virtualhost due.example.test: renewal scheduled (4 day(s) left" in "\n".join(messages)
    summary = [m for m in messages if m.startswith("certificate renewal scan:")]
    assert summary == [
        "certificate renewal scan: 5 enabled host(s) seen, 2 due, 2 renewal(s) enqueued; "
        "skipped: 0 already queued or running, 0 waiting for their retry time, 2 not due, "
        "1 disabled, 1 without a certificate; 0 unreadable certificate file(s)"
    ]

    # Again, and from two schedulers at once: nothing is enqueued twice.
    assert jobs.check_certificate_renewals()["enqueued"] == []
    results = in_threads(jobs.check_certificate_renewals, 2)
    assert [r["enqueued"] for r in results] == [[], []]
    assert sorted(results[0]["already_queued"]) == ["due.example.test", "due45.example.test"]
    assert queued_renewals() == sorted([renew_id(due), renew_id(due45)])
    assert RenewalScan.objects.filter(finished_at__isnull=False).count() == 4

    chain.drain()
    assert chain.failed_jobs() == []
    for host in (due, due45, fresh, short, disabled):
        host.refresh_from_db()
    for host in (due, due45):
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert host.cert_serial != before[host.hostname]
        assert served_serial(chain, host.hostname) == host.cert_serial
        orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
        assert orders.count() == 1
    for host in (fresh, short):
        assert served_serial(chain, host.hostname) == before[host.hostname] == host.cert_serial
        assert not host.events.exists()
    assert not disabled.events.exists()
    assert "virtualhost due.example.test: certificate renewed" in "\n".join(jobs_messages(caplog))

    # The renewed certificates are not due: the next scan leaves everything alone.
    result = jobs.check_certificate_renewals()
    assert (result["due"], result["enqueued"]) == (0, [])


def test_renewal_enqueued_twice_orders_once(chain: Chain):
    """A renewal that finds the host already renewed (under its lock) places no order."""
    host = stand_in(chain, "twice.example.test", remaining=5)
    chain.nginx.reload()
    jobs.check_certificate_renewals()
    chain.drain()
    host.refresh_from_db()
    serial = host.cert_serial
    # A late duplicate (e.g. queued by an older release without deduplication).
    django_rq.get_queue("modoboa").enqueue(jobs.renew_virtualhost, host.pk)
    chain.drain()
    host.refresh_from_db()
    assert host.cert_serial == serial
    assert host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK).count() == 1
    assert host.events.filter(step=constants.STEP_ORDER, outcome="skipped").count() == 1


def test_failed_renewal_keeps_the_old_certificate_and_backs_off(chain: Chain):
    from modoboa.admin.models import Alarm

    host = stand_in(chain, "failing.example.test", lifetime=90, remaining=5)
    chain.nginx.reload()
    old_serial = served_serial(chain, host.hostname)
    chain.dns.nxdomain.add(host.hostname)  # the CA cannot resolve the name

    assert jobs.check_certificate_renewals()["enqueued"] == [host.hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_ORDER
    assert host.attempts == 1
    assert host.next_attempt_at is not None
    wait = host.next_attempt_at - timezone.now()
    assert datetime.timedelta(seconds=30) < wait <= datetime.timedelta(minutes=1)
    assert served_serial(chain, host.hostname) == old_serial == host.cert_serial
    # 5 days left and the renewal fails: the urgent alarm is open.
    alarm = Alarm.objects.get(internal_name=f"virtualhost:{host.pk}", status=1)
    assert "expires in 4 day(s)" in alarm.title and "renewal keeps failing" in alarm.title

    # The next scans respect the backoff instead of retrying on every run.
    result = jobs.check_certificate_renewals()
    assert result["enqueued"] == [] and queued_renewals() == []
    assert "1 waiting for their retry time" in result["summary"]
    assert "1 close to expiry with failing renewals (failing.example.test)" in result["summary"]

    # Once the retry time has come (and the cause is fixed), the scan retries it.
    VirtualHost.objects.filter(pk=host.pk).update(
        next_attempt_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    chain.dns.nxdomain.discard(host.hostname)
    assert jobs.check_certificate_renewals()["enqueued"] == [host.hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.attempts == 0
    assert served_serial(chain, host.hostname) == host.cert_serial != old_serial
    assert not Alarm.objects.filter(internal_name=f"virtualhost:{host.pk}", status=1).exists()


def test_unusable_files_are_reported_and_do_not_stop_the_scan(chain: Chain, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    garbage = stand_in(chain, "garbage.example.test", site=False)
    garbage_file = storage.certificate_paths(chain.storage, garbage.hostname)[0]
    garbage_file.unlink()
    garbage_file.write_bytes(b"this is not a certificate\n")
    missing = stand_in(chain, "missing.example.test", site=False)
    storage.certificate_paths(chain.storage, missing.hostname)[0].unlink()
    unreadable = stand_in(chain, "dir.example.test", site=False)
    unreadable_file = storage.certificate_paths(chain.storage, unreadable.hostname)[0]
    unreadable_file.unlink()
    unreadable_file.mkdir()  # reading it fails with EISDIR (root reads any mode)
    stand_in(chain, "due.example.test", site=False)
    # A host whose recorded facts are stale: the scan records what is on disk.
    drifted = stand_in(chain, "drifted.example.test", remaining=60, site=False)
    VirtualHost.objects.filter(pk=drifted.pk).update(cert_serial="", cert_not_after=None)

    result = jobs.check_certificate_renewals()
    assert sorted(result["unreadable"]) == [
        "dir.example.test",
        "garbage.example.test",
        "missing.example.test",
    ]
    assert "due.example.test" in result["enqueued"]  # the others were still scanned
    for host, words in (
        (garbage, "is not a PEM certificate"),
        (missing, "is missing although a certificate was issued"),
        (unreadable, "Cannot read"),
    ):
        host.refresh_from_db()
        assert host.status == constants.STATUS_FAILED
        assert str(storage.certificate_paths(chain.storage, host.hostname)[0]) in host.last_error
        assert words in host.last_error
        # A new order replaces the file: planned like any renewal, once.
        assert renew_id(host) in queued_renewals()
    assert "3 unreadable certificate file(s)" in result["summary"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("virtualhost garbage.example.test: ") for m in warnings)
    drifted.refresh_from_db()
    on_disk = x509.parse_leaf(storage.read_fullchain(chain.storage, drifted.hostname) or b"")
    assert (drifted.cert_serial, drifted.cert_not_after) == (on_disk.serial, on_disk.not_after)
    django_rq.get_queue("modoboa").empty()


def test_scan_issues_a_constant_number_of_queries(chain: Chain):
    for i in range(3):
        stand_in(chain, f"a{i}.example.test", remaining=60, site=False)
    jobs.check_certificate_renewals()  # warm-up: caches, parameters
    with CaptureQueriesContext(connection) as small:
        jobs.check_certificate_renewals()
    for i in range(12):
        stand_in(chain, f"b{i}.example.test", remaining=60, site=False)
    stand_in(chain, "c.example.test", files=False, site=False)
    with CaptureQueriesContext(connection) as large:
        result = jobs.check_certificate_renewals()
    assert result["seen"] == 16
    assert len(large) == len(small), [q["sql"] for q in large.captured_queries]


def test_stale_scan_warns_through_a_system_check_and_an_alarm(chain: Chain):
    from modoboa.admin.models import Alarm

    assert check_renewal_scan() == []  # no certificate yet: nothing to warn about
    host = stand_in(chain, "stale.example.test", remaining=60, site=False)
    assert check_renewal_scan() == []  # a fresh install: its first night has not come yet
    VirtualHost.objects.filter(pk=host.pk).update(created_at=timezone.now() - 2 * DAY)
    (warning,) = check_renewal_scan()
    assert warning.id == "virtualhosts.W001"
    assert "it has never run" in warning.msg
    assert alarms.refresh_staleness_alarm() is not None
    assert Alarm.objects.filter(internal_name=alarms.SCAN_ALARM, status=1).count() == 1

    jobs.check_certificate_renewals()
    assert check_renewal_scan() == []
    assert not Alarm.objects.filter(internal_name=alarms.SCAN_ALARM, status=1).exists()

    RenewalScan.objects.update(finished_at=timezone.now() - datetime.timedelta(hours=27))
    (warning,) = check_renewal_scan()
    assert "more than 26 hours" in warning.msg and "rqcron" in warning.msg


# -- coalesced reloads ---------------------------------------------------------------


def reload_count(chain: Chain, offset: int) -> int:
    """Reloads since ``offset`` of nginx's error log: the master logs each SIGHUP it gets."""
    with open(chain.nginx.error_log_path, "rb") as log:
        log.seek(offset)
        return log.read().count(b"(SIGHUP) received")


RENEWED_TOGETHER = 10


def renew_many_at_once(chain: Chain) -> tuple[list[VirtualHost], int, dict[str, str]]:
    hosts = [
        stand_in(chain, f"burst{i}.example.test", remaining=5) for i in range(RENEWED_TOGETHER)
    ]
    chain.nginx.reload()
    before = {h.hostname: served_serial(chain, h.hostname) for h in hosts}
    ctx = jobs.build_context()
    ctx.acme(ctx.settings).ensure_account()  # one account, registered before the burst
    offset = chain.nginx.error_log_path.stat().st_size
    ids = iter(h.pk for h in hosts)
    lock = threading.Lock()

    def one_worker() -> str:
        with lock:
            host_id = next(ids)
        return jobs.renew_virtualhost(host_id)

    started = time.monotonic()
    statuses = in_threads(one_worker, RENEWED_TOGETHER)
    # Each renewal stored its pair and queued its second half behind the others.
    assert statuses == [constants.STATUS_PROVISIONING] * RENEWED_TOGETHER, statuses
    chain.drain()
    elapsed = time.monotonic() - started
    statuses = [h.status for h in VirtualHost.objects.filter(pk__in=[h.pk for h in hosts])]
    assert statuses == [constants.STATUS_ACTIVE] * RENEWED_TOGETHER, [
        (h.hostname, h.last_error) for h in VirtualHost.objects.filter(status="failed")
    ]
    reloads = reload_count(chain, offset)
    print(f"{RENEWED_TOGETHER} renewals at once: {reloads} nginx reload(s) in {elapsed:.1f} s")
    return hosts, reloads, before


def assert_all_renewed_and_served(chain: Chain, hosts, before) -> None:
    for host in hosts:
        host.refresh_from_db()
        assert host.cert_serial != before[host.hostname]
        assert served_serial(chain, host.hostname) == host.cert_serial


def test_renewals_finishing_together_share_reloads_locally(chain: Chain):
    hosts, reloads, before = renew_many_at_once(chain)
    assert 1 <= reloads <= RENEWED_TOGETHER // 3
    assert_all_renewed_and_served(chain, hosts, before)


def test_renewals_finishing_together_share_privileged_reloads(chain: Chain, privileged_worker):
    hosts, reloads, before = renew_many_at_once(chain)
    assert 1 <= reloads <= RENEWED_TOGETHER // 3
    assert_all_renewed_and_served(chain, hosts, before)
    finished = django_rq.get_queue("privileged").finished_job_registry.get_job_ids()
    assert len(finished) == reloads  # one privileged job per reload, none per host


def test_a_burst_of_renewals_on_a_single_worker_shares_one_reload(chain: Chain):
    """Modoboa runs one `modoboa` worker: renewals run one after the other, yet nginx
    reloads once for the burst, not once per host."""
    hosts = [
        stand_in(chain, f"serial{i}.example.test", remaining=5) for i in range(RENEWED_TOGETHER)
    ]
    chain.nginx.reload()
    before = {h.hostname: served_serial(chain, h.hostname) for h in hosts}
    offset = chain.nginx.error_log_path.stat().st_size

    report = jobs.check_certificate_renewals()
    assert len(report["enqueued"]) == RENEWED_TOGETHER
    chain.drain()  # one in-process worker, one job at a time

    reloads = reload_count(chain, offset)
    print(f"{RENEWED_TOGETHER} queued renewals on one worker: {reloads} nginx reload(s)")
    assert reloads == 1
    assert_all_renewed_and_served(chain, hosts, before)
    for host in hosts:
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        run = [e for e in host.events.all() if e.run_id == host.events.first().run_id]
        steps = sorted((e.step, e.outcome) for e in run)
        assert (constants.STEP_VERIFY, constants.OUTCOME_OK) in steps
        assert (constants.STEP_ORDER, constants.OUTCOME_OK) in steps


def test_dry_run_and_scan_agree_host_by_host(chain: Chain):
    """`virtualhosts scan --dry-run` renews exactly what the scan then enqueues, for the same
    reasons: one decision serves both."""
    import io
    import json

    from django.core.management import call_command

    stand_in(chain, "due.example.test", remaining=5, site=False)
    stand_in(chain, "fresh.example.test", remaining=60, site=False)
    stand_in(chain, "short.example.test", lifetime=6, remaining=2, site=False)
    stand_in(chain, "expired.example.test", remaining=-1, site=False)
    stand_in(chain, "off.example.test", remaining=2, enabled=False, site=False)
    stand_in(chain, "new.example.test", files=False, site=False)
    backing_off = stand_in(chain, "waiting.example.test", remaining=3, site=False)
    VirtualHost.objects.filter(pk=backing_off.pk).update(
        status=constants.STATUS_FAILED, attempts=2, next_attempt_at=timezone.now() + DAY
    )
    garbage = stand_in(chain, "garbage.example.test", remaining=60, site=False)
    storage.certificate_paths(chain.storage, garbage.hostname)[0].write_text("not a certificate")
    renamed = stand_in(chain, "renamed.example.test", remaining=60, site=False)
    not_before, not_after = validity(remaining=60 * DAY)
    other, key = make_chain_pem(["other.example.test"], not_before=not_before, not_after=not_after)
    storage.write_certificate_pair(chain.storage, renamed.hostname, other, key)

    out = io.StringIO()
    call_command("virtualhosts", "scan", "--dry-run", "--json", stdout=out)
    plan = {row["hostname"]: row for row in json.loads(out.getvalue())}
    assert queued_renewals() == []  # the dry run enqueued nothing

    jobs.check_certificate_renewals()
    renewed_ids = {int(job_id.rsplit("-", 1)[1]) for job_id in queued_renewals()}
    renewed = VirtualHost.objects.filter(pk__in=renewed_ids)
    enqueued = set(renewed.values_list("hostname", flat=True))
    assert len(plan) == VirtualHost.objects.count()
    for hostname, row in plan.items():
        assert (row["action"] == "renew") == (hostname in enqueued), (hostname, row["reason"])
    assert enqueued == {
        "due.example.test",
        "short.example.test",
        "expired.example.test",
        "garbage.example.test",
        "renamed.example.test",
    }
    assert "does not cover" in plan["renamed.example.test"]["reason"]
    assert "next try after" in plan["waiting.example.test"]["reason"]
    assert "disabled" in plan["off.example.test"]["reason"]
    assert "no certificate yet" in plan["new.example.test"]["reason"]
    # The real scan recorded the unusable file with the very reason the dry run gave.
    garbage.refresh_from_db()
    assert garbage.last_error == plan["garbage.example.test"]["reason"]

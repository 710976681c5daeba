"""Retries happen by themselves: failed runs once their time has come, and stuck hosts."""

from __future__ import annotations

import datetime

import django_rq
import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, jobs, policy
from modoboa_pro.virtualhosts.adapters import locks
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, set_parameters

pytestmark = pytest.mark.chain

PAST = datetime.timedelta(minutes=1)


def fail_by_dns(chain: Chain, hostname: str) -> VirtualHost:
    chain.dns.nxdomain.add(hostname)
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED and host.next_attempt_at is not None
    return host


def test_a_failed_provisioning_is_retried_once_its_time_has_come(chain: Chain):
    host = fail_by_dns(chain, "later.example.test")
    chain.dns.nxdomain.discard("later.example.test")

    # Not yet: the backoff says when.
    assert jobs.retry_due_virtualhosts()["retried"] == []
    assert django_rq.get_queue("modoboa").count == 0

    VirtualHost.objects.filter(pk=host.pk).update(next_attempt_at=timezone.now() - PAST)
    assert jobs.retry_due_virtualhosts()["retried"] == ["later.example.test"]
    assert jobs.retry_due_virtualhosts()["retried"] == []  # already queued: not twice
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error


def test_a_failure_an_operator_must_fix_is_not_retried(chain: Chain):
    set_parameters(acme_account_email="")
    host = VirtualHost.objects.create(hostname="noemail.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED and host.next_attempt_at is None
    assert jobs.retry_due_virtualhosts()["retried"] == []


def test_a_host_left_provisioning_by_a_crash_is_resumed(chain: Chain):
    host = VirtualHost.objects.create(hostname="crashed.example.test")
    django_rq.get_queue("modoboa").empty()  # its job was lost with the worker
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_PROVISIONING,
        updated_at=timezone.now() - datetime.timedelta(hours=2),
    )
    with locks.HostLock(chain.redis.client(), host.hostname, constants.HOST_LOCK_TTL):
        # While a run holds the host, it is not stuck: leave it alone.
        assert jobs.retry_due_virtualhosts()["busy"] == ["crashed.example.test"]
    assert jobs.retry_due_virtualhosts()["retried"] == ["crashed.example.test"]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error


def test_a_failed_renewal_is_retried_through_the_renewal_path(chain: Chain):
    host = VirtualHost.objects.create(hostname="again.example.test")
    chain.drain()
    host.refresh_from_db()
    serial = host.cert_serial
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_FAILED,
        attempts=1,
        last_error="the CA was down",
        next_attempt_at=timezone.now() - PAST,
    )
    assert jobs.retry_due_virtualhosts()["retried"] == ["again.example.test"]
    queued = django_rq.get_queue("modoboa").get_jobs()
    assert [j.func_name.rsplit(".", 1)[-1] for j in queued] == ["renew_virtualhost"]
    chain.drain()
    host.refresh_from_db()
    # Not due any more: the renewal re-checks, orders nothing, verifies what is served.
    assert host.status == constants.STATUS_ACTIVE and host.cert_serial == serial
    assert host.attempts == 0 and host.last_error == ""


def test_the_daily_scan_also_retries(chain: Chain):
    host = fail_by_dns(chain, "nightly.example.test")
    chain.dns.nxdomain.discard("nightly.example.test")
    VirtualHost.objects.filter(pk=host.pk).update(next_attempt_at=timezone.now() - PAST)
    assert jobs.check_certificate_renewals()["retried"] == ["nightly.example.test"]


def test_a_failed_disable_is_retried_until_the_site_is_gone(chain: Chain):
    """A disable that could not take the site out (e.g. nginx refused) is retried like a run."""
    from modoboa_pro.virtualhosts.adapters import nginx

    host = VirtualHost.objects.create(hostname="off-later.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    # Disabled, but its disable job failed: the row says so, the site is still there.
    VirtualHost.objects.filter(pk=host.pk).update(
        enabled=False,
        status=constants.STATUS_FAILED,
        failed_step=constants.STEP_REMOVE,
        attempts=1,
        next_attempt_at=timezone.now() - PAST,
    )
    site = nginx.site_path(chain.nginx.sites_dir, host.hostname)
    assert site.exists()

    assert jobs.retry_due_virtualhosts()["retried"] == ["off-later.example.test"]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_DISABLED and host.attempts == 0
    assert host.next_attempt_at is None and not site.exists()


def test_a_run_whose_worker_died_is_resumed_within_minutes(chain: Chain):
    """No hour-long wait: a few minutes after its last change, and nobody alive holds it."""
    import subprocess

    host = VirtualHost.objects.create(hostname="orphan.example.test")
    django_rq.get_queue("modoboa").empty()  # its job died with the worker
    recently = timezone.now() - policy.ORPHANED_RUN_AFTER - datetime.timedelta(seconds=5)
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_PROVISIONING, updated_at=recently
    )
    # The dead run's lock: its process exited without releasing it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    chain.redis.client().set(
        locks.lock_key(host.hostname),
        f"deadbeef {recently.isoformat()} {locks.this_machine()} {dead.pid}",
        px=int(constants.HOST_LOCK_TTL.total_seconds() * 1000),
    )
    assert jobs.retry_due_virtualhosts()["retried"] == ["orphan.example.test"]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error


def test_a_failed_renew_now_is_retried_as_renew_now(chain: Chain):
    """An admin's Renew now on a certificate that is not due, failing at the CA: its
    retry still orders a new certificate (it used to find "not due" and stop there,
    showing the old certificate as if renewed)."""
    from modoboa_pro.virtualhosts import services

    host = VirtualHost.objects.create(hostname="again.example.test")
    chain.drain()
    host.refresh_from_db()
    first = host.cert_serial
    assert host.status == constants.STATUS_ACTIVE and first

    chain.dns.nxdomain.add(host.hostname)
    services.renew_now(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.renewal_requested_at is not None  # remembered across the failure

    chain.dns.nxdomain.discard(host.hostname)
    VirtualHost.objects.filter(pk=host.pk).update(next_attempt_at=timezone.now() - PAST)
    assert jobs.retry_due_virtualhosts()["retried"] == [host.hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != first
    assert host.renewal_requested_at is None  # fulfilled: later retries are not forced

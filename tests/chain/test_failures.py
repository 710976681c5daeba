"""Failures through the real programs: clear, recorded, recoverable, nothing lost."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import requests

from modoboa_pro.testing import free_port
from modoboa_pro.virtualhosts import constants, jobs, queueing, services
from modoboa_pro.virtualhosts.adapters import locks, tls, x509
from modoboa_pro.virtualhosts.errors import ConfigurationError, RunInProgress
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, Chain, set_parameters, work_burst

pytestmark = pytest.mark.chain


def open_alarms(host: VirtualHost) -> list[str]:
    from modoboa.admin.constants import ALARM_OPENED
    from modoboa.admin.models import Alarm

    return list(
        Alarm.objects.filter(
            internal_name=f"virtualhost:{host.pk}", status=ALARM_OPENED
        ).values_list("title", flat=True)
    )


def http_get(chain: Chain, hostname: str, path: str = "/") -> requests.Response:
    return requests.get(
        f"http://127.0.0.1:{chain.nginx.http_port}{path}",
        headers={"Host": hostname},
        allow_redirects=False,
        timeout=5,
    )


def last_run_steps(host: VirtualHost) -> list[tuple[str, str]]:
    events = list(host.events.order_by("started_at", "id"))
    run_id = events[-1].run_id
    return [(e.step, e.outcome) for e in events if e.run_id == run_id]


def provision_and_fail(chain: Chain, hostname: str) -> VirtualHost:
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    return host


def provision_active(chain: Chain, hostname: str) -> VirtualHost:
    """Create a host and run the chain until it is served over HTTPS."""
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    return host


def retry_and_succeed(chain: Chain, host: VirtualHost) -> VirtualHost:
    services.retry_provisioning(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.last_error == "" and host.attempts == 0
    assert open_alarms(host) == []
    served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, host.hostname)
    assert served.serial == host.cert_serial
    return host


def test_dns_failure_is_explained_then_retry_succeeds(chain: Chain, settings):
    # The CA's own failure, as behind a NAT: the pre-flight would name it first
    # (tests/chain/test_preflight.py).
    settings.VIRTUALHOSTS_PREFLIGHT = False
    chain.dns.nxdomain.add("nx.example.test")
    host = provision_and_fail(chain, "nx.example.test")

    assert host.failed_step == constants.STEP_ORDER
    assert "could not validate nx.example.test" in host.last_error
    assert "could not resolve" in host.last_error  # the CA's own detail
    assert "resolves in public DNS" in host.last_error and "port 80" in host.last_error
    assert host.next_attempt_at is not None  # a validation failure is retried later
    assert host.attempts == 1
    assert any("nx.example.test" in title for title in open_alarms(host))
    # The HTTP-only site stays in place and serves the application meanwhile.
    assert http_get(chain, "nx.example.test").content == BACKEND_BODY
    assert not (chain.storage / "certs" / "nx.example.test").exists()

    chain.dns.nxdomain.discard("nx.example.test")
    retry_and_succeed(chain, host)
    # The HTTP-only site was already there: the retry did not rewrite it.
    assert last_run_steps(host)[0] == (constants.STEP_HTTP_SITE, constants.OUTCOME_SKIPPED)


def test_unreachable_acme_directory(chain: Chain, settings):
    good_url = settings.ACME_DIRECTORY_URL
    settings.ACME_DIRECTORY_URL = f"https://127.0.0.1:{free_port()}/dir"
    host = provision_and_fail(chain, "ca-down.example.test")

    assert host.failed_step == constants.STEP_ACCOUNT
    assert "could not be fetched" in host.last_error
    assert "ACME_DIRECTORY_URL" in host.last_error
    assert host.next_attempt_at is not None

    settings.ACME_DIRECTORY_URL = good_url
    retry_and_succeed(chain, host)


def test_missing_account_email(chain: Chain):
    set_parameters(acme_account_email="")
    host = provision_and_fail(chain, "no-email.example.test")

    assert host.failed_step == constants.STEP_ACCOUNT
    assert "No ACME account email is set" in host.last_error
    assert "Settings > Virtual hosts" in host.last_error
    assert host.next_attempt_at is None  # nothing to retry until an operator acts
    # Retrying before fixing the cause is refused with what to configure.
    with pytest.raises(ConfigurationError, match="ACME account email"):
        services.retry_provisioning(host)

    set_parameters(acme_account_email="hostmaster@example.org")
    retry_and_succeed(chain, host)


@pytest.fixture
def broken_https_template(settings, tmp_path: Path):
    """An instance-level template override whose HTTPS site fails `nginx -t`."""
    override = tmp_path / "templates" / "virtualhosts" / "nginx"
    override.mkdir(parents=True)
    (override / "https.conf").write_text("server { this_is_not_a_directive on; }\n")
    templates = [dict(engine) for engine in settings.TEMPLATES]
    templates[0]["DIRS"] = [str(tmp_path / "templates")]
    settings.TEMPLATES = templates
    return templates


def test_nginx_test_failure_keeps_the_serving_site(chain: Chain, settings, broken_https_template):
    set_parameters(enable_letsencrypt=False)
    host = VirtualHost.objects.create(hostname="tpl.example.test")
    chain.drain()
    site = chain.nginx.sites_dir / "tpl.example.test.conf"
    serving = site.read_text()
    assert http_get(chain, "tpl.example.test").content == BACKEND_BODY

    set_parameters(enable_letsencrypt=True)
    services.retry_provisioning(host)
    chain.drain()
    host.refresh_from_db()

    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_HTTPS_SITE
    assert 'unknown directive "this_is_not_a_directive"' in host.last_error
    # The previous site file is back, byte for byte, and still served.
    assert site.read_text() == serving
    assert http_get(chain, "tpl.example.test").content == BACKEND_BODY
    # The certificate obtained is kept: the retry will not order again.
    assert (chain.storage / "certs" / "tpl.example.test" / "fullchain.pem").exists()

    settings.TEMPLATES = [dict(e, DIRS=[]) for e in broken_https_template]
    retry_and_succeed(chain, host)
    steps = dict(last_run_steps(host))
    assert steps[constants.STEP_ORDER] == constants.OUTCOME_SKIPPED
    assert steps[constants.STEP_HTTPS_SITE] == constants.OUTCOME_OK


def test_retry_while_a_run_holds_the_lock(chain: Chain):
    set_parameters(enable_letsencrypt=False)
    host = VirtualHost.objects.create(hostname="busy.example.test")
    chain.drain()
    host.refresh_from_db()
    connection = chain.redis.client()
    with locks.HostLock(connection, host.hostname, constants.HOST_LOCK_TTL):
        assert queueing.is_busy(host.pk, host.hostname)
        with pytest.raises(RunInProgress, match="already in progress"):
            services.retry_provisioning(host)
        # A job that runs anyway (e.g. a second scheduler) steps aside without acting.
        assert jobs.provision_virtualhost(host.pk) == "busy"
    assert not queueing.is_busy(host.pk, host.hostname)


def test_disable_removes_the_site_and_reenable_restores_it_without_a_new_order(chain: Chain):
    host = VirtualHost.objects.create(hostname="toggle.example.test")
    chain.drain()
    host.refresh_from_db()
    serial = host.cert_serial
    site = chain.nginx.sites_dir / "toggle.example.test.conf"
    assert site.exists()

    services.set_enabled(host, False)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_DISABLED
    assert not site.exists()
    assert http_get(chain, "toggle.example.test").status_code == 404  # nginx's default server
    # The certificate files are kept for when the host comes back.
    assert (chain.storage / "certs" / "toggle.example.test" / "privkey.pem").exists()

    services.set_enabled(host, True)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial == serial
    assert dict(last_run_steps(host))[constants.STEP_ORDER] == constants.OUTCOME_SKIPPED


def test_delete_removes_the_site_and_archives_the_certificate(chain: Chain):
    host = VirtualHost.objects.create(hostname="gone.example.test")
    chain.drain()
    host.refresh_from_db()
    serial = host.cert_serial
    services.delete_virtualhost(host)
    chain.drain()

    assert not (chain.nginx.sites_dir / "gone.example.test.conf").exists()
    assert http_get(chain, "gone.example.test").status_code == 404
    assert not (chain.storage / "certs" / "gone.example.test").exists()
    archived = list((chain.storage / "archive").glob("gone.example.test-*"))
    assert len(archived) == 1

    chains = [p for p in archived[0].rglob("fullchain.pem") if p.is_file()]
    assert any(x509.parse_leaf(p.read_bytes()).serial == serial for p in chains)


def test_reload_through_the_privileged_worker(chain: Chain, privileged_worker):
    """The modoboa worker asks the root worker to test and reload, and waits for it."""
    import django_rq

    host = VirtualHost.objects.create(hostname="priv.example.test")
    queue = django_rq.get_queue("modoboa")
    deadline = time.monotonic() + 60
    while queue.count and time.monotonic() < deadline:
        work_burst(queue)
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    finished = django_rq.get_queue("privileged").finished_job_registry.get_job_ids()
    assert len(finished) >= 2  # HTTP-only site, then HTTPS site
    served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, host.hostname)
    assert served.serial == host.cert_serial


def test_privileged_job_reports_a_failed_test_without_raising(nginx_server, settings):
    """An expected failure is an outcome (for the waiting chain), not a crashed job."""
    settings.VIRTUALHOSTS_NGINX_TEST_COMMAND = nginx_server.test_command
    settings.VIRTUALHOSTS_NGINX_RELOAD_COMMAND = nginx_server.reload_command
    bad = nginx_server.sites_dir / "zz-broken.conf"
    bad.write_text("server { nonsense; }\n")
    try:
        outcome = jobs.nginx_test_and_reload()
    finally:
        bad.unlink()
    assert outcome["ok"] is False and outcome["kind"] == "test"
    assert 'unknown directive "nonsense"' in outcome["message"]
    assert jobs.nginx_test_and_reload()["ok"] is True


def test_alarm_of_a_host_without_domain_is_filed_under_the_matching_modoboa_domain(chain: Chain):
    """Modoboa's Alarms page lists only alarms with a domain: pick the one the name belongs to."""
    from modoboa.admin.models import Alarm, Domain

    domain = Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    chain.dns.nxdomain.add("lost.sub.example.test")
    host = provision_and_fail(chain, "lost.sub.example.test")
    assert host.domain is None
    alarm = Alarm.objects.get(internal_name=f"virtualhost:{host.pk}")
    assert alarm.domain == domain


def test_a_run_reloads_nginx_when_it_still_serves_an_older_certificate(chain: Chain):
    """E.g. a worker killed between switching the pair and reloading: the next run
    finds a valid certificate on disk, places no order, and gets nginx to serve it."""
    from modoboa_pro.testing import make_chain_pem, validity
    from modoboa_pro.virtualhosts.adapters import storage

    host = VirtualHost.objects.create(hostname="stale.example.test")
    chain.drain()
    host.refresh_from_db()
    old_serial = host.cert_serial
    not_before, not_after = validity(remaining=datetime.timedelta(days=80))
    fullchain, key = make_chain_pem(
        ["stale.example.test"], not_before=not_before, not_after=not_after
    )
    storage.write_certificate_pair(chain.storage, "stale.example.test", fullchain, key)
    new_serial = x509.parse_leaf(fullchain).serial
    assert (
        tls.fetch_served_certificate(
            "127.0.0.1", chain.nginx.https_port, "stale.example.test"
        ).serial
        == old_serial
    )

    retry_and_succeed(chain, host)
    assert host.cert_serial == new_serial
    steps = dict(last_run_steps(host))
    assert steps[constants.STEP_ORDER] == constants.OUTCOME_SKIPPED
    verify = host.events.filter(step=constants.STEP_VERIFY).first()
    assert verify is not None and "reloaded" in verify.message


def test_the_ca_forgetting_our_account_is_recovered(chain: Chain):
    """Pebble keeps accounts in memory: after a restart it knows neither us nor its old root."""
    first = VirtualHost.objects.create(hostname="before.example.test")
    chain.drain()
    first.refresh_from_db()
    assert first.status == constants.STATUS_ACTIVE, first.last_error

    chain.pebble.stop()
    chain.pebble.start()
    second = VirtualHost.objects.create(hostname="after.example.test")
    chain.drain()
    second.refresh_from_db()
    assert second.status == constants.STATUS_ACTIVE, second.last_error
    account_step = second.events.get(step=constants.STEP_ACCOUNT)
    assert account_step.outcome == constants.OUTCOME_OK


def test_a_site_written_but_never_loaded_is_loaded_by_the_next_run(chain: Chain):
    """E.g. a worker killed between writing the site file and the reload."""
    set_parameters(enable_letsencrypt=False)
    host = VirtualHost.objects.create(hostname="unloaded.example.test")
    chain.drain()
    site = chain.nginx.sites_dir / "unloaded.example.test.conf"
    content = site.read_text()
    site.unlink()
    chain.nginx.reload()
    assert http_get(chain, "unloaded.example.test").status_code == 404
    site.write_text(content)  # on disk, unknown to nginx

    services.retry_provisioning(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_HTTP_ONLY, host.last_error
    assert http_get(chain, "unloaded.example.test").content == BACKEND_BODY
    step = host.events.filter(step=constants.STEP_HTTP_SITE).first()
    assert step is not None and "not loaded by nginx; reloaded" in step.message


def test_a_site_broken_by_someone_else_is_named_and_ours_is_kept(chain: Chain):
    host = provision_active(chain, "mine.example.test")
    # Someone else's file in the included directory breaks `nginx -t`.
    broken = chain.nginx.sites_dir / "aaa-someone-else.conf"
    broken.write_text("server { this_is_not_a_directive; }\n")
    site = chain.nginx.sites_dir / "mine.example.test.conf"
    ours = site.read_text()

    services.renew_now(host)  # new files, same site: the reload's test fails
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_HTTPS_SITE
    assert f"nginx -t fails because of {broken}, not because of the site of" in host.last_error
    assert "Fix or remove that file" in host.last_error
    assert host.next_attempt_at is not None  # retried by itself once that file is fixed
    # Ours was not at fault: neither the site nor the new certificate was rolled back.
    assert site.read_text() == ours
    new_serial = x509.parse_leaf(
        (chain.storage / "certs" / "mine.example.test" / "fullchain.pem").read_bytes()
    ).serial
    assert new_serial != host.cert_serial
    # nginx still serves the previous certificate meanwhile.
    served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, host.hostname)
    assert served.serial == host.cert_serial

    broken.unlink()
    retry_and_succeed(chain, host)
    assert host.cert_serial == new_serial  # the kept pair is the one served now

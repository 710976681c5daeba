"""New hosts created together share their nginx reloads (``Context.defer_step``).

Each new host's run writes its site, asks for a reload and hands the rest of the run to a
follow-up job queued behind the other new hosts: the worker goes on to the next host
instead of waiting, and the first follow-up's reload loads every site written before it.
"""

from __future__ import annotations

import django_rq
import pytest

from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.adapters import nginx
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, FIRST_ISSUANCE_STEPS, Chain
from .test_failures import http_get
from .test_renewal import reload_count, served_serial

pytestmark = pytest.mark.chain

CREATED_TOGETHER = 8


def create_together(chain: Chain, prefix: str) -> list[VirtualHost]:
    hosts = [
        services.create_virtualhost(f"{prefix}{i}.example.test") for i in range(CREATED_TOGETHER)
    ]
    chain.drain()  # one in-process worker, one job at a time, as Modoboa's single worker
    return list(VirtualHost.objects.filter(pk__in=[h.pk for h in hosts]).order_by("pk"))


def one_run(host: VirtualHost) -> list[tuple[str, str]]:
    events = list(host.events.order_by("started_at", "id"))
    assert len({e.run_id for e in events}) == 1, "one run, continued across jobs"
    return [(e.step, e.outcome) for e in events]


def test_new_hosts_created_together_share_two_reloads(chain: Chain):
    offset = chain.nginx.error_log_path.stat().st_size
    hosts = create_together(chain, "new")

    assert [h.status for h in hosts] == [constants.STATUS_ACTIVE] * CREATED_TOGETHER, [
        (h.hostname, h.last_error) for h in hosts
    ]
    # One reload for the HTTP-only sites, one for the HTTPS sites: not two per host.
    assert reload_count(chain, offset) == 2
    for host in hosts:
        assert served_serial(chain, host.hostname) == host.cert_serial
        # The history shows each step once: a deferred step is completed, not repeated.
        assert one_run(host) == FIRST_ISSUANCE_STEPS
        http_site = host.events.get(step=constants.STEP_HTTP_SITE)
        assert "one nginx reload shared with the other new hosts" in http_site.message


def test_new_hosts_share_the_privileged_workers_reloads(chain: Chain, privileged_worker):
    """Through Modoboa's root worker (a real `rqworker privileged`): one job per reload."""
    offset = chain.nginx.error_log_path.stat().st_size
    hosts = create_together(chain, "root")

    assert [h.status for h in hosts] == [constants.STATUS_ACTIVE] * CREATED_TOGETHER, [
        (h.hostname, h.last_error) for h in hosts
    ]
    reloads = reload_count(chain, offset)
    assert reloads == 2
    finished = django_rq.get_queue("privileged").finished_job_registry.get_job_ids()
    assert len(finished) == reloads  # one privileged job per reload, none per host
    for host in hosts:
        assert served_serial(chain, host.hostname) == host.cert_serial


def test_a_new_site_nginx_refuses_is_taken_back_and_the_others_go_on(chain: Chain, monkeypatch):
    """One host's HTTPS site fails `nginx -t` in the reload shared by all: that host gets its
    HTTP-only site back and says why; the others, blamed on its file, are retried and end
    active; nothing is left half-deployed."""
    from modoboa_pro.virtualhosts import pipeline

    render = pipeline.render_https
    bad = "bad3.example.test"

    def broken_for_one(context):
        content = render(context)
        return content.replace("ssl_certificate ", "ssl_certificat ") if bad in content else content

    monkeypatch.setattr(pipeline, "render_https", broken_for_one)
    hosts = {h.hostname: h for h in create_together(chain, "bad")}

    failed = hosts[bad]
    assert failed.status == constants.STATUS_FAILED
    assert failed.failed_step == constants.STEP_HTTPS_SITE
    assert 'unknown directive "ssl_certificat"' in failed.last_error
    site = nginx.site_path(chain.nginx.sites_dir, bad).read_text()
    assert "ssl_certificate" not in site and "/.well-known/acme-challenge/" in site
    assert http_get(chain, bad).content == BACKEND_BODY  # the HTTP-only site still serves

    others = [h for name, h in hosts.items() if name != bad]
    for host in others:
        if host.status == constants.STATUS_FAILED:  # blamed on the bad host's file
            assert f"nginx -t fails because of {chain.nginx.sites_dir / (bad + '.conf')}" in (
                host.last_error
            )
            services.retry_provisioning(host)
    chain.drain()
    for host in others:
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert served_serial(chain, host.hostname) == host.cert_serial

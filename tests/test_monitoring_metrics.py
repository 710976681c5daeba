"""The Prometheus metrics: scraped over HTTP with a token, written for node_exporter, cheap.

Hosts are provisioned through real nginx and Pebble; the scrape goes through a real HTTP
server (pytest-django's ``live_server``) and is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import datetime
import os
import stat

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from modoboa_pro.virtualhosts import constants, metrics, services
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost

from .chain.test_provisioning import served_certificate
from .conftest import Chain

pytestmark = pytest.mark.monitoring

PATH = "/api/v2/virtualhosts/metrics/"
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, keyed by its name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def of(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def matching(found: dict, name: str, **labels: str) -> dict[frozenset, float]:
    wanted = set(labels.items())
    return {k[1]: v for k, v in found.items() if k[0] == name and wanted <= k[1]}


def token_for(username: str, role: str | None = None) -> str:
    from django.contrib.auth.models import Group
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    user, created = User.objects.get_or_create(username=username, defaults={"email": username})
    if created and role:
        user.groups.add(Group.objects.get(name=role))
    return Token.objects.get_or_create(user=user)[0].key


def test_metrics_scraped_over_http_match_the_served_certificates(
    chain: Chain, live_server, tmp_path
):
    from modoboa.admin.models import Domain

    domain = Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    services.create_virtualhost("www.example.test", domain=domain)
    services.create_virtualhost("shop.example.test")
    chain.dns.nxdomain.add("lost.example.test")
    services.create_virtualhost("lost.example.test", domain=domain)
    chain.drain()
    chain.dns.nxdomain.discard("lost.example.test")
    hosts = {h.hostname: h for h in VirtualHost.objects.all()}
    assert hosts["www.example.test"].status == constants.STATUS_ACTIVE
    assert hosts["lost.example.test"].status == constants.STATUS_FAILED
    RenewalScan.objects.create(finished_at=timezone.now(), hosts_seen=3, due=1, enqueued=1)

    url = live_server.url + PATH
    admin = {"Authorization": f"Token {token_for('admin')}"}
    answer = requests.get(url, headers={**admin, "Accept": PROMETHEUS_ACCEPT}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    plain = requests.get(url, headers={**admin, "Accept": "text/plain"}, timeout=10)
    assert plain.status_code == 200
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(plain.text)

    # The certificate facts are those of the certificate nginx serves.
    for name, dom in (("www.example.test", "example.test"), ("shop.example.test", "")):
        cert = served_certificate(chain, name)
        labels = {"hostname": name, "domain": dom}
        expires = of(found, "modoboa_certificate_expiration_timestamp_seconds", **labels)
        assert expires == cert.not_valid_after_utc.timestamp()
        begins = of(found, "modoboa_certificate_not_before_timestamp_seconds", **labels)
        assert begins == cert.not_valid_before_utc.timestamp()
        renews = of(found, "modoboa_certificate_renewal_timestamp_seconds", **labels)
        assert begins < renews < expires
        assert of(found, "modoboa_certificate_ready_status", condition="True", **labels) == 1
        assert of(found, "modoboa_certificate_ready_status", condition="False", **labels) == 0
        assert of(found, "modoboa_virtualhost_status", status="active", **labels) == 1
        assert of(found, "modoboa_virtualhost_consecutive_failures", **labels) == 0
    lost = {"hostname": "lost.example.test", "domain": "example.test"}
    assert of(found, "modoboa_certificate_ready_status", condition="False", **lost) == 1
    assert of(found, "modoboa_virtualhost_status", status="failed", **lost) == 1
    assert of(found, "modoboa_virtualhost_consecutive_failures", **lost) == 1
    assert not matching(found, "modoboa_certificate_expiration_timestamp_seconds", **lost)
    since = of(found, "modoboa_virtualhost_failing_since_timestamp_seconds", **lost)
    assert since == hosts["lost.example.test"].failing_since.timestamp()

    # Instance-wide: the scan, the CA's requests, orders, reloads, queues.
    assert of(found, "modoboa_renewal_scan_hosts", result="enqueued") == 1
    assert of(found, "modoboa_renewal_scan_stale") == 0
    assert of(found, "modoboa_redis_up") == 1
    assert of(found, "modoboa_jobs_queued", queue="modoboa") == 0
    ca = f"127.0.0.1:{chain.pebble.directory_url.split(':')[2].split('/')[0]}"
    created = of(
        found,
        "modoboa_http_acme_client_request_count_total",
        host=ca,
        method="POST",
        action="newOrder",
        status="201",
    )
    # One order per host served; the pre-flight stopped the lost one before any order.
    assert created == 2
    assert of(found, "modoboa_acme_orders_total", host=ca) == 2
    timed = of(
        found,
        "modoboa_http_acme_client_request_duration_seconds_count",
        host=ca,
        method="POST",
        action="newOrder",
        status="201",
    )
    assert timed == 2
    assert (
        of(
            found,
            "modoboa_http_acme_client_request_duration_seconds_sum",
            host=ca,
            method="POST",
            action="newOrder",
            status="201",
        )
        > 0
    )
    assert of(found, "modoboa_reloads_total", service="nginx", outcome="ok") >= 2

    # Without a token: 401; a DomainAdmin (who sees only their hosts): 403.
    assert requests.get(url, timeout=10).status_code == 401
    domain_admin = {"Authorization": f"Token {token_for('da@example.test', 'DomainAdmins')}"}
    refused = requests.get(url, headers={**domain_admin, "Accept": "text/plain"}, timeout=10)
    assert refused.status_code == 403
    assert "SuperAdmins" in refused.text

    # The textfile route: the same series, written atomically, readable by node_exporter.
    target = tmp_path / "textfile" / "modoboa.prom"
    target.parent.mkdir()
    call_command("virtualhosts", "metrics", "--output", str(target))
    assert stat.S_IMODE(os.stat(target).st_mode) == constants.PUBLIC_FILE_MODE
    assert os.listdir(target.parent) == ["modoboa.prom"]  # no temporary file left behind
    written = samples(target.read_text())
    assert {k: v for k, v in written.items() if "certificate" in k[0]} == {
        k: v for k, v in found.items() if "certificate" in k[0]
    }


def _host(i: int, now: datetime.datetime, domain) -> VirtualHost:
    status = (constants.STATUS_ACTIVE, constants.STATUS_FAILED, constants.STATUS_PAUSED)[i % 3]
    return VirtualHost(
        hostname=f"h{i}.example.test",
        domain=domain if i % 2 else None,
        status=status,
        attempts=0 if status == constants.STATUS_ACTIVE else i,
        failing_since=None if status == constants.STATUS_ACTIVE else now,
        cert_serial=f"{i:x}",
        cert_not_before=now - datetime.timedelta(days=30),
        cert_not_after=now + datetime.timedelta(days=60),
    )


def test_the_number_of_queries_does_not_grow_with_the_hosts(modoboa, redis_server):
    from modoboa.admin.models import Domain

    domain = Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    now = timezone.now()
    RenewalScan.objects.create(finished_at=now)
    VirtualHost.objects.bulk_create([_host(i, now, domain) for i in range(4)])
    with CaptureQueriesContext(connection) as four:
        few = samples(metrics.text().decode())
    VirtualHost.objects.bulk_create([_host(i, now, domain) for i in range(4, 40)])
    with CaptureQueriesContext(connection) as forty:
        many = samples(metrics.text().decode())
    assert len(four) == len(forty), [q["sql"] for q in forty]
    assert len(matching(few, "modoboa_virtualhost_consecutive_failures")) == 4
    assert len(matching(many, "modoboa_virtualhost_consecutive_failures")) == 40
    assert (
        of(
            many,
            "modoboa_virtualhost_status",
            status="paused",
            hostname="h5.example.test",
            domain="example.test",
        )
        == 1
    )

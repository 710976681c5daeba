"""Faults injected at the pipeline's seams (CA, served certificate), on real nginx and Redis."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, jobs, pipeline
from modoboa_pro.virtualhosts.adapters import probe
from modoboa_pro.virtualhosts.adapters.x509 import CertificateFacts
from modoboa_pro.virtualhosts.errors import AcmeRateLimited
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain

pytestmark = pytest.mark.chain


class RateLimitedCA:
    def __init__(self, until: datetime.datetime) -> None:
        self.until = until

    def ensure_account(self) -> object:
        return object()

    def obtain_certificate(
        self, hostname, csr_pem, publisher, *, replaces="", profile=None
    ) -> bytes:
        raise AcmeRateLimited(
            f"The certificate authority rate-limited us: too many certificates for {hostname}. "
            f"Nothing will be retried before {self.until:%Y-%m-%d %H:%M} UTC.",
            retry_after=self.until,
        )


class BrokenCA:
    def ensure_account(self) -> object:
        raise RuntimeError("a bug in a CA adapter")


def new_host(hostname: str) -> VirtualHost:
    return VirtualHost.objects.create(hostname=hostname)  # its job is queued, not run


def test_rate_limit_sets_the_retry_time_from_the_ca(chain: Chain):
    host = new_host("limited.example.test")
    until = timezone.now() + datetime.timedelta(hours=3)
    ctx = jobs.build_context()
    ctx.acme = lambda s: RateLimitedCA(until)

    assert pipeline.provision(host.pk, ctx) == constants.STATUS_FAILED
    host.refresh_from_db()
    assert host.failed_step == constants.STEP_ORDER
    assert "rate-limited" in host.last_error and f"{until:%Y-%m-%d %H:%M}" in host.last_error
    assert host.next_attempt_at == until  # later than the 1-minute backoff: the CA wins


def test_a_bug_is_recorded_and_reaches_rq(chain: Chain):
    host = new_host("bug.example.test")
    ctx = jobs.build_context()
    ctx.acme = lambda s: BrokenCA()

    with pytest.raises(RuntimeError, match="a bug in a CA adapter"):
        pipeline.provision(host.pk, ctx)
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_ACCOUNT
    assert "Internal error" in host.last_error and "RQ failed jobs" in host.last_error


def test_nginx_serving_another_certificate_is_not_active(chain: Chain, monkeypatch):
    monkeypatch.setattr(probe, "VERIFY_TIMEOUT", 0.5)
    host = new_host("stale.example.test")
    ctx = jobs.build_context()
    stale = CertificateFacts(
        serial="01",
        not_before=timezone.now(),
        not_after=timezone.now(),
        issuer="someone else",
        names=("stale.example.test",),
        fingerprint_sha256="00",
    )
    ctx.served = lambda hostname: stale

    assert pipeline.provision(host.pk, ctx) == constants.STATUS_FAILED
    host.refresh_from_db()
    assert host.failed_step == constants.STEP_VERIFY
    assert "does not steadily serve the new certificate" in host.last_error
    assert "last saw: serial 01" in host.last_error


def test_a_run_for_a_deleted_host_does_nothing(chain: Chain):
    host = new_host("ephemeral.example.test")
    host_id = host.pk
    VirtualHost.objects.filter(pk=host_id).delete()
    assert jobs.provision_virtualhost(host_id) == "gone"

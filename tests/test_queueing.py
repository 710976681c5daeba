"""Enqueueing: one job per host and action whoever asks, one timeout for every chain job."""

from __future__ import annotations

import datetime
import time

import django_rq
import pytest
from django.utils import timezone
from rq.job import Job, JobStatus

from modoboa_pro.virtualhosts import constants, jobs, queueing, retries, services
from modoboa_pro.virtualhosts.models import VirtualHost

from .conftest import Chain


def queue():
    return django_rq.get_queue(constants.QUEUE_DEFAULT)


def bare_host(hostname: str, **fields) -> VirtualHost:
    """A host row whose creation enqueues nothing (bulk_create sends no signal)."""
    return VirtualHost.objects.bulk_create([VirtualHost(hostname=hostname, **fields)])[0]


def test_one_job_per_host_and_action_whatever_the_previous_job_became(redis_server, db):
    """Queued: refused. Failed: requeued (RQ keeps its traceback). Finished: replaced."""
    host = bare_host("dedup.example.test")
    renew_id = queueing.job_id(queueing.RENEW, host.pk)
    assert renew_id == f"virtualhosts-renew-{host.pk}"
    assert queueing.enqueue_once(queueing.RENEW, host.pk, host.pk, False) is True
    assert queueing.enqueue_once(queueing.RENEW, host.pk, host.pk, False) is False
    assert queue().get_job_ids() == [renew_id]

    job = Job.fetch(renew_id, connection=queue().connection)
    queue().remove(job)
    job.set_status(JobStatus.FAILED)
    queue().failed_job_registry.add(job, ttl=3600)
    assert queueing.enqueue_once(queueing.RENEW, host.pk, host.pk, False) is True
    assert queue().get_job_ids() == [renew_id]
    assert queue().failed_job_registry.get_job_ids() == []

    # A failed job with other arguments is replaced, not requeued: "Renew now" after a
    # failed scheduled renewal must really force a new order.
    queue().remove(job)
    job.set_status(JobStatus.FAILED)
    queue().failed_job_registry.add(job, ttl=3600)
    assert queueing.enqueue_once(queueing.RENEW, host.pk, host.pk, True) is True
    assert Job.fetch(renew_id, connection=queue().connection).args == (host.pk, True)

    queue().remove(renew_id)
    Job.fetch(renew_id, connection=queue().connection).set_status(JobStatus.FINISHED)
    assert queueing.enqueue_once(queueing.RENEW, host.pk, host.pk, False) is True
    assert queue().get_job_ids() == [renew_id]
    assert Job.fetch(renew_id, connection=queue().connection).get_status() == "queued"
    # Another action for the same host has its own id.
    assert queueing.enqueue_once(queueing.DISABLE, host.pk, host.pk) is True
    assert sorted(queue().get_job_ids()) == sorted([renew_id, f"virtualhosts-disable-{host.pk}"])


def test_every_chain_job_gets_the_chain_timeout(
    redis_server, modoboa, django_capture_on_commit_callbacks
):
    """Provisioning, renewal, disable, removal and retries: one timeout, not RQ's 180 s."""
    from .conftest import set_parameters

    set_parameters(enable_letsencrypt=True, acme_account_email="hostmaster@example.org")
    with django_capture_on_commit_callbacks(execute=True):
        host = services.create_virtualhost("timeouts.example.test")
    queue().empty()
    with django_capture_on_commit_callbacks(execute=True):
        services.enqueue_renewal(host, force=True)
        services.enqueue_disable(host)
        services.enqueue_removal(host)
    jobs.defer_finish_renewal(host.pk, 1, "run")
    failed = bare_host(
        "failed.example.test",
        status=constants.STATUS_FAILED,
        attempts=1,
        next_attempt_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    assert retries.run(letsencrypt=True).retried == [failed.hostname]
    found = {job.func_name.rsplit(".", 1)[1]: job.timeout for job in queue().get_jobs()}
    assert found == {
        "renew_virtualhost": queueing.CHAIN_JOB_TIMEOUT,
        "disable_virtualhost": queueing.CHAIN_JOB_TIMEOUT,
        "remove_virtualhost": queueing.CHAIN_JOB_TIMEOUT,
        "finish_renewal": queueing.CHAIN_JOB_TIMEOUT,
        "provision_virtualhost": queueing.CHAIN_JOB_TIMEOUT,
    }
    assert queueing.CHAIN_JOB_TIMEOUT > constants.HOST_LOCK_TTL.total_seconds()


class SlowCA:
    """The real CA, but the order takes longer than the job is allowed to."""

    def __init__(self, ca, seconds: float) -> None:
        self._ca, self._seconds = ca, seconds

    def __getattr__(self, name: str):
        return getattr(self._ca, name)

    def obtain_certificate(self, *args, **kwargs) -> bytes:
        time.sleep(self._seconds)
        return self._ca.obtain_certificate(*args, **kwargs)


@pytest.mark.chain
def test_a_job_stopped_at_its_timeout_is_recorded_and_retried(chain: Chain, monkeypatch):
    monkeypatch.setattr(queueing, "CHAIN_JOB_TIMEOUT", 1)
    real_build_context = jobs.build_context

    def slow_context():
        ctx = real_build_context()
        make_ca = ctx.acme
        ctx.acme = lambda s: SlowCA(make_ca(s), 5)
        return ctx

    monkeypatch.setattr(jobs, "build_context", slow_context)
    host = VirtualHost.objects.create(hostname="slow.example.test")
    chain.drain()

    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_ORDER
    assert "took longer than its RQ job timeout" in host.last_error
    assert host.next_attempt_at is not None  # retried by the sweep, not left stuck
    # The job stopped: a new host's run orders in its follow-up job (after its site's reload).
    assert chain.failed_jobs() == [queueing.job_id(queueing.AFTER_HTTP_SITE, host.pk)]

    monkeypatch.setattr(jobs, "build_context", real_build_context)
    monkeypatch.setattr(queueing, "CHAIN_JOB_TIMEOUT", 600)
    report = retries.run(letsencrypt=True, now=host.next_attempt_at)
    assert report.retried == [host.hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error

"""The only write entry points for the API, the CLI and signal handlers.

Validate, save desired state, enqueue the work after the transaction commits.
"""

from __future__ import annotations

import logging

import django_rq
from django.db import transaction
from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import constants, parameters
from .adapters import locks
from .errors import ConfigurationError, LockHeld
from .hostnames import normalize_hostname
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")

# RQ job states in which a job will still run (or is running): enqueueing again would
# be a duplicate.
PENDING_STATES = frozenset(
    {"created", "queued", "started", "deferred", "scheduled", "rate_limited"}
)


def job_id(action: str, host_id: int) -> str:
    """A stable RQ job id (only [A-Za-z0-9_-], as RQ requires)."""
    return f"virtualhosts-{action}-{int(host_id)}"


def _queue():
    return django_rq.get_queue(constants.QUEUE_DEFAULT)


def pending_job(action: str, host_id: int) -> Job | None:
    """The queued or running job for this host and action, if any."""
    queue = _queue()
    try:
        job = Job.fetch(job_id(action, host_id), connection=queue.connection)
    except NoSuchJobError:
        return None
    return job if job_state(job) in PENDING_STATES else None


def job_state(job: Job) -> str:
    """The job's RQ status as plain text ("queued", "failed"...)."""
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status))


def is_busy(host: VirtualHost) -> bool:
    """True while a provisioning or renewal run is queued or running for this host."""
    connection = _queue().connection
    return (
        locks.is_locked(connection, host.hostname)
        or pending_job("provision", host.pk) is not None
        or pending_job("renew", host.pk) is not None
        or pending_job("finish", host.pk) is not None
    )


def _enqueue(func_name: str, action: str, host_id: int) -> None:
    from . import jobs

    def send() -> None:
        if pending_job(action, host_id) is not None:
            logger.info("virtualhost #%s: %s already queued", host_id, action)
            return
        _queue().enqueue(getattr(jobs, func_name), host_id, job_id=job_id(action, host_id))

    transaction.on_commit(send)


def enqueue_provisioning(host: VirtualHost) -> None:
    _enqueue("provision_virtualhost", "provision", host.pk)


def enqueue_renewal(host: VirtualHost) -> None:
    """ "Renew now": once the transaction commits, unless a renewal is already pending."""
    from . import jobs, scan

    transaction.on_commit(lambda: scan.enqueue_renewal_once(host, jobs.renew_virtualhost))


def create_virtualhost(hostname: str, *, enabled: bool = True, domain=None) -> VirtualHost:
    """Create a host; provisioning starts once the transaction commits."""
    name = normalize_hostname(hostname)
    host = VirtualHost(hostname=name, enabled=enabled, domain=domain)
    host.full_clean()
    host.save()  # the post_save handler enqueues provisioning
    return host


def set_enabled(host: VirtualHost, enabled: bool) -> VirtualHost:
    """Enable (provision) or disable (remove the site, stop renewals) a host."""
    if host.enabled != enabled:
        host.enabled = enabled
        host.save()  # the post_save handler reacts to the change
    return host


def delete_virtualhost(host: VirtualHost) -> None:
    """Delete a host: its site is removed, its certificate files archived."""
    host.delete()  # the post_delete handler enqueues the removal


def _check_ready_for_letsencrypt() -> None:
    if parameters.get("enable_letsencrypt") and not parameters.get("acme_account_email"):
        raise ConfigurationError(
            "Set the ACME account email in Settings > Virtual hosts before provisioning."
        )


def retry_provisioning(host: VirtualHost) -> VirtualHost:
    """Re-run the chain (steps already done are skipped). Raises LockHeld if busy."""
    if not host.enabled:
        raise ConfigurationError(f"{host.hostname} is disabled: enable it to provision it.")
    if is_busy(host):
        raise LockHeld(f"A run for {host.hostname} is already in progress.")
    _check_ready_for_letsencrypt()
    host.status = constants.STATUS_PENDING
    host.next_attempt_at = None
    host.save(update_fields=["status", "next_attempt_at", "updated_at"])
    enqueue_provisioning(host)
    return host


def renew_now(host: VirtualHost) -> VirtualHost:
    """Order a new certificate now through the renewal chain. Raises LockHeld if busy."""
    if not host.enabled:
        raise ConfigurationError(f"{host.hostname} is disabled: enable it to renew it.")
    if not parameters.get("enable_letsencrypt"):
        raise ConfigurationError("Let's Encrypt is disabled in Settings > Virtual hosts.")
    if is_busy(host):
        raise LockHeld(f"A run for {host.hostname} is already in progress.")
    _check_ready_for_letsencrypt()
    enqueue_renewal(host)
    return host


def provision_missing() -> int:
    """Enqueue provisioning for enabled hosts without a certificate (Let's Encrypt turned on)."""
    count = 0
    for host in VirtualHost.objects.filter(enabled=True, cert_not_after__isnull=True).only("pk"):
        enqueue_provisioning(host)
        count += 1
    return count


def configuration_problem() -> str | None:
    """What an operator must configure before hosts can get certificates, or None."""
    try:
        _check_ready_for_letsencrypt()
    except ConfigurationError as err:
        return err.message
    return None


def find_virtualhost(hostname: str) -> VirtualHost:
    """The host named ``hostname`` (any spelling normalize_hostname accepts)."""
    return VirtualHost.objects.select_related("domain").get(hostname=normalize_hostname(hostname))

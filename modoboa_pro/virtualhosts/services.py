"""The only write entry points for the API, the CLI and signal handlers.

Validate, save desired state (only its own fields), enqueue the work after the
transaction commits (``queueing``).
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from . import conf, constants, domain_names, queueing
from .domain_names import NameOutcome
from .errors import (
    ConfigurationError,
    DuplicateHost,
    InvalidHostname,
    RunInProgress,
    VirtualHostError,
)
from .hostnames import normalize_hostname
from .models import DESIRED_FIELDS, VirtualHost

logger = logging.getLogger("modoboa.jobs")


def _enqueue_on_commit(path: str, host_id: int, *args: object, description: str = "") -> None:
    def send() -> None:
        try:
            queued = queueing.enqueue_once(path, host_id, *args, description=description)
        except (VirtualHostError, RedisError) as err:
            # Redis went away between the check and the commit: the change is saved, and
            # the retry sweep queues the job once Redis is back (see retries.due).
            logger.error(
                "virtualhost #%s: %s saved but not queued (%s); the retry sweep will queue "
                "it once Redis is back",
                host_id,
                queueing.ACTIONS[path],
                err,
            )
            return
        if not queued:
            logger.info(
                "virtualhost #%s: %s already queued or running", host_id, queueing.ACTIONS[path]
            )

    transaction.on_commit(send)


def enqueue_provisioning(host: VirtualHost) -> None:
    _enqueue_on_commit(
        queueing.PROVISION, host.pk, host.pk, description=f"provision {host.hostname}"
    )


def enqueue_renewal(host: VirtualHost, *, force: bool = False) -> None:
    """Renew (``force``: order even if not due) once the transaction commits."""
    _enqueue_on_commit(
        queueing.RENEW, host.pk, host.pk, force, description=f"renew {host.hostname}"
    )


def enqueue_disable(host: VirtualHost) -> None:
    """Take the site out of nginx, after the run in progress if any."""
    _enqueue_on_commit(queueing.DISABLE, host.pk, host.pk, description=f"disable {host.hostname}")


def enqueue_removal(host: VirtualHost) -> None:
    """After deletion: remove the site and archive the certificate files."""
    _enqueue_on_commit(
        queueing.REMOVE, host.pk, host.hostname, description=f"remove {host.hostname}"
    )


def _check_ready_for_letsencrypt() -> None:
    params = conf.params()  # one read instead of two
    if params["enable_letsencrypt"] and not params["acme_account_email"]:
        raise ConfigurationError(
            "Set the ACME account email in Settings > Virtual hosts before provisioning."
        )


def create_virtualhost(
    hostname: str,
    *,
    enabled: bool = True,
    domain=None,
    acme_profile: str = "",
    serves_mail: bool = False,
    site: str = constants.SITE_WEB,
) -> VirtualHost:
    """Create a host; provisioning starts once the transaction commits.

    Raises ConfigurationError (Let's Encrypt on without an account email),
    InvalidHostname, or DuplicateHost (the normalised name exists).
    """
    _check_ready_for_letsencrypt()
    name = normalize_hostname(hostname)
    if VirtualHost.objects.filter(hostname=name).exists():
        raise DuplicateHost(f"A virtual host named {name} already exists.")
    queueing.ensure_reachable()
    # A host created disabled has nothing to run: it starts as what it is.
    status = constants.STATUS_PENDING if enabled else constants.STATUS_DISABLED
    host = VirtualHost(
        hostname=name,
        enabled=enabled,
        domain=domain,
        status=status,
        acme_profile=acme_profile,
        serves_mail=serves_mail,
        site=site,
    )
    host.full_clean()
    host.save()  # the post_save handler enqueues provisioning
    return host


def set_enabled(host: VirtualHost, enabled: bool) -> VirtualHost:
    """Enable (provision) or disable (remove the site, stop renewals) a host."""
    if host.enabled != enabled:
        queueing.ensure_reachable()
        host.enabled = enabled
        # Desired state only: a run may be recording its outcome meanwhile.
        host.save(update_fields=DESIRED_FIELDS)  # the post_save handler reacts
    return host


def set_acme_profile(host: VirtualHost, profile: str) -> VirtualHost:
    """Choose the host's ACME profile ("": the default); its next order uses it.

    The certificate in place is kept: a new profile alone is no reason to spend an order
    (Renew now does it at once). Raises django's ValidationError for a malformed name.
    """
    if host.acme_profile != profile:
        host.acme_profile = profile
        host.full_clean(validate_unique=False, validate_constraints=False)
        host.save(update_fields=["acme_profile", "updated_at"])
    return host


def set_serves_mail(host: VirtualHost, serves_mail: bool) -> VirtualHost:
    """Mark a host as serving mail (its certificate also goes to Postfix and Dovecot) or
    not (it leaves their files): an enabled host's next run, queued now, does it."""
    if host.serves_mail != serves_mail:
        if host.enabled:
            queueing.ensure_reachable()
        host.serves_mail = serves_mail
        host.save(update_fields=["serves_mail", "updated_at"])
        if host.enabled:
            enqueue_provisioning(host)
    return host


def delete_virtualhost(host: VirtualHost) -> None:
    """Delete a host: its site is removed, its certificate files archived."""
    # Without Redis the removal job could not be queued, and no row would be left to
    # retry it from: refuse instead of leaving a site nobody manages.
    queueing.ensure_reachable()
    host.delete()  # the post_delete handler enqueues the removal


def _check_idle(host: VirtualHost) -> None:
    if queueing.is_busy(host.pk, host.hostname):
        raise RunInProgress(f"A run for {host.hostname} is already in progress.")


def retry_provisioning(host: VirtualHost) -> VirtualHost:
    """Re-run the chain (steps already done are skipped). Raises RunInProgress if busy."""
    if not host.enabled:
        raise ConfigurationError(f"{host.hostname} is disabled: enable it to provision it.")
    _check_idle(host)
    _check_ready_for_letsencrypt()
    # Shown at once in the UI; the run writes everything else. A paused host is un-paused:
    # its streak of failures starts again from the next failure.
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_PENDING, next_attempt_at=None, failing_since=None
    )
    host.refresh_from_db()
    enqueue_provisioning(host)
    return host


def _check_renewable(host: VirtualHost) -> None:
    if not host.enabled:
        raise ConfigurationError(f"{host.hostname} is disabled: enable it to renew it.")
    if not conf.param("enable_letsencrypt"):
        raise ConfigurationError("Let's Encrypt is disabled in Settings > Virtual hosts.")
    _check_idle(host)
    _check_ready_for_letsencrypt()


def renew_now(host: VirtualHost) -> VirtualHost:
    """Order a new certificate now through the renewal chain. Raises RunInProgress if busy."""
    _check_renewable(host)
    # Remembered until a new certificate is stored: a failed forced renewal is retried
    # as forced, not turned into "not due, nothing to do".
    # It un-pauses a paused host too (shown at once): the streak of failures starts again
    # from the next failure.
    VirtualHost.objects.filter(pk=host.pk).update(
        renewal_requested_at=timezone.now(), failing_since=None
    )
    VirtualHost.objects.filter(pk=host.pk, status=constants.STATUS_PAUSED).update(
        status=constants.STATUS_PENDING
    )
    host.refresh_from_db()
    enqueue_renewal(host, force=True)
    return host


def provision_missing() -> int:
    """Enqueue provisioning for enabled hosts without a certificate (Let's Encrypt turned on)."""
    count = 0
    hosts = VirtualHost.objects.filter(enabled=True, cert_not_after__isnull=True)
    for host in hosts.only("pk", "hostname"):
        enqueue_provisioning(host)
        count += 1
    return count


def find_virtualhost(hostname: str) -> VirtualHost:
    """The host named ``hostname`` (any spelling normalize_hostname accepts).

    A host saved before the rules tightened (a name refused today) is found by its exact
    stored name, so that it can still be shown, disabled and removed. Raises
    InvalidHostname for another invalid name, VirtualHost.DoesNotExist for an unknown one.
    """
    hosts = VirtualHost.objects.select_related("domain")
    try:
        name = normalize_hostname(hostname)
    except InvalidHostname:
        # Earlier rules stored printable ASCII only (and PostgreSQL refuses a NUL in a query).
        if not (hostname.isascii() and hostname.isprintable()):
            raise
        legacy = hosts.filter(hostname=hostname).first()
        if legacy is None:
            raise
        return legacy
    return hosts.get(hostname=name)


def create_domain_names(domain) -> list[NameOutcome]:
    """Create the usual names of a Modoboa domain (``domain_names.USUAL_NAMES``), one by one.

    A name that exists already is left as it is and reported; each other one is created on
    its own (a refused name does not stop the others) and provisioned by its own job, so a
    name whose DNS is not there yet fails alone. Raises ConfigurationError or
    QueueUnavailable, before anything is created, when no host could be provisioned.
    """
    _check_ready_for_letsencrypt()
    queueing.ensure_reachable()
    outcomes = []
    for usual in domain_names.USUAL_NAMES:
        outcomes.append(_create_usual_name(usual, domain))
    return outcomes


def _create_usual_name(usual: domain_names.UsualName, domain) -> NameOutcome:
    wanted = usual.hostname(domain.name)

    def outcome(hostname: str, kind: str, message: str, host=None) -> NameOutcome:
        return NameOutcome(hostname, usual.site, usual.serves_mail, kind, message, host)

    try:
        name = normalize_hostname(wanted)
        existing = VirtualHost.objects.filter(hostname=name).first()
        if existing is not None:
            return outcome(
                name, domain_names.EXISTS, f"{name} already exists; left as it is.", existing
            )
        with transaction.atomic():  # a refused name rolls back alone
            host = create_virtualhost(
                name, domain=domain, serves_mail=usual.serves_mail, site=usual.site
            )
    except (InvalidHostname, DuplicateHost) as err:
        return outcome(wanted, domain_names.REFUSED, err.message)
    except IntegrityError:  # created meanwhile by another request (the unique hostname)
        return outcome(wanted, domain_names.EXISTS, f"{wanted} already exists; left as it is.")
    except DjangoValidationError as err:
        return outcome(wanted, domain_names.REFUSED, " ".join(err.messages))
    return outcome(
        host.hostname,
        domain_names.CREATED,
        f"{host.hostname} created; provisioning queued (its DNS record must point at this "
        "server).",
        host,
    )


def rotate_key(host: VirtualHost) -> VirtualHost:
    """Force a mail host's next key in: a renewal is queued now, and its certificate uses
    the next key whether or not its TLSA record is published (docs/mail.md).

    Remembered until a certificate with another key is served, so the retries of a failed
    renewal (or of a pair rolled back) rotate again. Raises ConfigurationError for a host
    whose key is not kept, RunInProgress.
    """
    if not host.serves_mail or not conf.get("VIRTUALHOSTS_MAIL_KEEP_KEY"):
        raise ConfigurationError(
            f"{host.hostname} gets a new key with every certificate (it is not a mail host, "
            "or VIRTUALHOSTS_MAIL_KEEP_KEY is off): Renew now is enough."
        )
    _check_renewable(host)
    # Set before the renewal is queued: the run reads it.
    VirtualHost.objects.filter(pk=host.pk).update(key_rotation_requested_at=timezone.now())
    return renew_now(host)

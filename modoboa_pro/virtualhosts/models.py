"""Virtual hosts: desired state (hostname, enabled) and observed state (status, certificate)."""

from __future__ import annotations

import datetime
import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import constants
from .errors import InvalidHostname
from .hostnames import normalize_hostname


def validate_hostname(value: str) -> None:
    """Django validator wrapping :func:`normalize_hostname`."""
    try:
        normalize_hostname(value)
    except InvalidHostname as err:
        raise ValidationError(err.message, code="invalid_hostname") from err


def validate_acme_profile(value: str) -> None:
    """An ACME profile name, or empty (the instance's ACME_PROFILE, else the CA's default)."""
    if value and not re.fullmatch(constants.ACME_PROFILE_PATTERN, value):
        raise ValidationError(
            _(
                "%(value)s is not an ACME profile name: letters, digits, '.', '_' and '-', "
                "such as tlsserver (leave it empty for the default)."
            )
            % {"value": repr(value[:70])},
            code="invalid_acme_profile",
        )


# Desired state: written by services (API, CLI, admin) only.
# (``renewal_requested_at`` too, but alone, by UPDATE: services.renew_now sets it, and a
# run that stores a new certificate clears it.)
DESIRED_FIELDS = (
    "hostname",
    "domain",
    "enabled",
    "acme_profile",
    "serves_mail",
    "site",
    "updated_at",
)
# Observed state: written by jobs only (``recording``), field by field, so that a
# run never overwrites a change an admin made while it ran.
OBSERVED_FIELDS = (
    "status",
    "current_step",
    "last_error",
    "failed_step",
    "attempts",
    "failing_since",
    "next_attempt_at",
    "cert_serial",
    "cert_issuer",
    "cert_not_before",
    "cert_not_after",
    "last_success_at",
    "ari_cert_id",
    "ari_renew_at",
    "ari_recheck_at",
    "ari_explanation_url",
    "tlsa_keys",
    "updated_at",
)


class VirtualHost(models.Model):
    """A name served by nginx, with its certificate's observed facts."""

    hostname = models.CharField(
        _("hostname"),
        max_length=constants.HOSTNAME_MAX_LENGTH,
        unique=True,
        validators=[validate_hostname],
        help_text=_("Fully-qualified name, e.g. www.example.com (IDNA-encoded when stored)."),
    )
    domain = models.ForeignKey(
        "admin.Domain",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="virtualhosts",
        help_text=_("Modoboa domain whose administrators may manage this host."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    acme_profile = models.CharField(
        _("ACME profile"),
        max_length=constants.ACME_PROFILE_MAX_LENGTH,
        blank=True,
        default="",
        validators=[validate_acme_profile],
        help_text=_(
            "The CA's certificate profile for this host (e.g. tlsserver), required at its "
            "next order; empty: the instance's ACME_PROFILE, else the CA's default."
        ),
    )
    serves_mail = models.BooleanField(
        _("serves mail"),
        default=False,
        help_text=_(
            "Also deploy this host's certificate to Postfix and Dovecot, by SNI "
            "(e.g. mail.example.com)."
        ),
    )
    site = models.CharField(
        _("site"),
        max_length=constants.SITE_MAX_LENGTH,
        choices=constants.SITES,
        default=constants.SITE_WEB,
        help_text=_(
            "What the HTTPS site serves: web (Modoboa), or only the mail client "
            "configuration paths (autoconfig, autodiscover) forwarded to Modoboa."
        ),
    )
    renewal_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_(
            "When an admin asked for a new certificate (Renew now); cleared once one is "
            "stored. Until then, retries order a new certificate even if none is due."
        ),
    )
    key_rotation_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_(
            "When an admin forced the next key in (rotate-key); cleared once a certificate "
            "with that key is stored. Mail hosts only."
        ),
    )

    # Observed state: written by jobs only.
    status = models.CharField(
        max_length=20, choices=constants.STATUSES, default=constants.STATUS_PENDING, db_index=True
    )
    current_step = models.CharField(
        max_length=20,
        blank=True,
        default="",
        help_text=_("The step a run is at now (the UI shows it while provisioning)."),
    )
    last_error = models.TextField(blank=True, default="")
    failed_step = models.CharField(max_length=20, blank=True, default="")
    attempts = models.PositiveIntegerField(
        default=0, help_text=_("Consecutive failed runs since the last success.")
    )
    failing_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("When the current streak of failed runs began (the pause counts from it)."),
    )
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When the next retry or renewal is planned.")
    )
    cert_serial = models.CharField(max_length=64, blank=True, default="")
    cert_issuer = models.CharField(max_length=255, blank=True, default="")
    cert_not_before = models.DateTimeField(null=True, blank=True)
    cert_not_after = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # ACME Renewal Information (RFC 9773) for the certificate ``ari_cert_id``: the renewal
    # time chosen in the CA's window, when to ask the CA again, and its explanation link.
    ari_cert_id = models.CharField(max_length=255, blank=True, default="")
    ari_renew_at = models.DateTimeField(
        null=True, blank=True, help_text=_("Renewal time chosen in the CA's ARI window.")
    )
    ari_recheck_at = models.DateTimeField(
        null=True, blank=True, help_text=_("No new ARI request to the CA before this time.")
    )
    ari_explanation_url = models.CharField(max_length=500, blank=True, default="")
    # A mail host's TLSA digests (SHA-256 of the SPKI, hex), as its last run saw them:
    # {"current": key, "next": next key, "chain": [each CA certificate of the chain]}.
    # Public values: the API shows them without reading the keys.
    tlsa_keys = models.JSONField(default=dict, blank=True)
    # Written by the renewal scan only: the files of the current pair as they were when
    # they passed every check, and digests of their leaf's facts (``adapters.pair_reader``);
    # the next scan skips the checks that depend on their content while they are unchanged,
    # and opens neither file while the facts recorded on the row are the leaf's.
    pair_stamp = models.CharField(max_length=255, blank=True, default="", editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # ``enabled`` as last loaded from or saved to the database (None: not known).
    loaded_enabled: bool | None = None

    class Meta:
        ordering = ["hostname"]
        verbose_name = _("virtual host")
        verbose_name_plural = _("virtual hosts")

    def __str__(self) -> str:
        return self.hostname

    def save(self, *args, **kwargs) -> None:
        # Normalise here too, so the ORM cannot store a name that could reach a path or config.
        self.hostname = normalize_hostname(self.hostname)
        super().save(*args, **kwargs)

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        # What the row said when loaded: the post_save handler reacts to a change of
        # ``enabled`` without a query of its own (Modoboa's idiom, see admin.Domain).
        instance.loaded_enabled = (
            values[field_names.index("enabled")] if "enabled" in field_names else None
        )
        return instance

    @property
    def has_certificate(self) -> bool:
        return self.cert_not_after is not None

    def days_left(self, now: datetime.datetime | None = None) -> int | None:
        """Whole days of validity left on the current certificate, or None."""
        if self.cert_not_after is None:
            return None
        return (self.cert_not_after - (now or timezone.now())).days


class VirtualHostEvent(models.Model):
    """One step of a provisioning or renewal run, for the host's history."""

    virtualhost = models.ForeignKey(VirtualHost, on_delete=models.CASCADE, related_name="events")
    run_id = models.CharField(max_length=40, blank=True, default="")
    step = models.CharField(max_length=20, choices=constants.STEPS)
    outcome = models.CharField(max_length=10, choices=constants.OUTCOMES)
    started_at = models.DateTimeField(default=timezone.now)
    duration = models.FloatField(default=0.0, help_text=_("Seconds."))
    message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["virtualhost", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.virtualhost_id} {self.step} {self.outcome}"


class RenewalScan(models.Model):
    """One run of the daily renewal scan: proof that the scheduler is alive, and its counts."""

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    hosts_seen = models.PositiveIntegerField(default=0)
    due = models.PositiveIntegerField(default=0)
    enqueued = models.PositiveIntegerField(default=0)
    unreadable = models.PositiveIntegerField(default=0)
    not_queued = models.PositiveIntegerField(
        default=0,
        help_text=_("Due renewals the scan could not queue (Redis unreachable): interrupted."),
    )
    summary = models.TextField(blank=True, default="", help_text=_("The scan's summary line."))

    class Meta:
        ordering = ["-started_at", "-id"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"renewal scan {self.started_at:%Y-%m-%d %H:%M}"


class BudgetEntry(models.Model):
    """One request that counts against the CA's limits (``budget``): a new order sent to the
    account of ``directory_url``, or a failed validation of ``hostname``.

    Not the hosts' history: that is pruned per host and goes with a deleted host, while the
    CA still counts what it received.
    """

    directory_url = models.CharField(max_length=500)
    hostname = models.CharField(max_length=constants.HOSTNAME_MAX_LENGTH)
    kind = models.CharField(
        max_length=20, choices=[("order", "order"), ("failed_validation", "failed validation")]
    )
    # An ARI renewal sending ``replaces``: the CA does not count it, neither do we.
    exempt = models.BooleanField(default=False)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["directory_url", "kind", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.hostname} {self.at:%Y-%m-%d %H:%M}"


class AlertState(models.Model):
    """What the alert emails last told about one subject: a host, or the renewal scan.

    Compared with the problems of now (``alert_rules``), it makes one email per change of
    state; a recovery email is sent for a subject whose row had a problem.
    """

    key = models.CharField(max_length=40, unique=True)  # alert_rules.host_key / SCAN_KEY
    hostname = models.CharField(max_length=constants.HOSTNAME_MAX_LENGTH, blank=True, default="")
    kind = models.CharField(max_length=20)  # alert_rules.KIND_*
    reason = models.TextField(blank=True, default="")
    notified_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.key} {self.kind}"


class AlertEmail(models.Model):
    """One alert email sent: the daily digest limit counts these."""

    sent_at = models.DateTimeField(default=timezone.now, db_index=True)
    digest = models.BooleanField(default=False)
    subject = models.CharField(max_length=255)
    recipients = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-sent_at", "-id"]

    def __str__(self) -> str:
        return f"{self.sent_at:%Y-%m-%d %H:%M} {self.subject}"

"""Modoboa parameters of the app: the "Virtual hosts" section of the Settings page."""

from __future__ import annotations

import collections
import os

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from .conf import PARAMETER_DEFAULTS as DEFAULTS
from .conf import PARAMETERS_APP as APP

STRUCT = collections.OrderedDict(
    [
        (
            "letsencrypt_sep",
            {
                "label": _("Let's Encrypt"),
                "params": collections.OrderedDict(
                    [
                        (
                            "enable_letsencrypt",
                            {
                                "label": _("Enable Let's Encrypt"),
                                "help_text": _(
                                    "Obtain and renew a certificate for every virtual host "
                                    "over ACME HTTP-01."
                                ),
                            },
                        ),
                        (
                            "acme_account_email",
                            {
                                "label": _("ACME account email"),
                                "help_text": _(
                                    "Contact address registered with the certificate authority."
                                ),
                                "display": "enable_letsencrypt=true",
                            },
                        ),
                        (
                            "acme_account_storage_path",
                            {
                                "label": _("ACME storage path"),
                                "help_text": _(
                                    "Absolute directory holding the ACME account key, the "
                                    "challenge webroot and the certificates."
                                ),
                                "display": "enable_letsencrypt=true",
                            },
                        ),
                        (
                            "certificate_renewal_threshold",
                            {
                                "label": _("Renewal threshold (days)"),
                                "help_text": _(
                                    "Renew a certificate when fewer days than this remain "
                                    "(capped at half the certificate's lifetime), or when a "
                                    "third of its lifetime is left (half under 10 days) if "
                                    "that comes first."
                                ),
                                "display": "enable_letsencrypt=true",
                            },
                        ),
                    ]
                ),
            },
        ),
        (
            "alerts_sep",
            {
                "label": _("Alert emails"),
                "params": collections.OrderedDict(
                    [
                        (
                            "enable_alert_emails",
                            {
                                "label": _("Send alert emails"),
                                "help_text": _(
                                    "Email when a host keeps failing, is paused, or its "
                                    "certificate nears expiry unrenewed, when the renewal "
                                    "scan stops, and when it is fine again (one email per "
                                    "change, at most one digest a day)."
                                ),
                            },
                        ),
                        (
                            "alert_recipients",
                            {
                                "label": _("Alert recipients"),
                                "help_text": _(
                                    "Addresses separated by commas; empty: every "
                                    "SuperAdmin's email address."
                                ),
                                "display": "enable_alert_emails=true",
                            },
                        ),
                    ]
                ),
            },
        ),
    ]
)

# At most this many alert recipients: a list, not a mailing list.
MAX_ALERT_RECIPIENTS = 20


def validate_recipients(value: str) -> str:
    """Email addresses separated by commas (or spaces, semicolons); normalised to ", "."""
    addresses = [a for a in value.replace(";", ",").replace(" ", ",").split(",") if a]
    if len(addresses) > MAX_ALERT_RECIPIENTS:
        raise serializers.ValidationError(
            _("Enter at most %(n)d addresses (use a mailing list for more).")
            % {"n": MAX_ALERT_RECIPIENTS}
        )
    field = serializers.EmailField()
    for address in addresses:
        try:
            field.run_validation(address)
        except serializers.ValidationError as err:
            raise serializers.ValidationError(
                _("%(address)s is not an email address; separate addresses with commas.")
                % {"address": address[:100]}
            ) from err
    return ", ".join(addresses)


def validate_storage_path(value: str) -> str:
    """An absolute path whose nearest existing ancestor is writable."""
    if not os.path.isabs(value):
        raise serializers.ValidationError(_("Enter an absolute path, e.g. /var/lib/modoboa/acme."))
    if any(c in value for c in "\n\r\x00"):
        raise serializers.ValidationError(_("The path contains control characters."))
    normalized = os.path.normpath(value)
    probe = normalized
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise serializers.ValidationError(
            _("%(path)s exists and is not a directory.") % {"path": probe}
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise serializers.ValidationError(
            _(
                "Modoboa cannot write to %(path)s: create the directory "
                "and give it to the Modoboa user."
            )
            % {"path": probe}
        )
    return normalized


class VirtualHostsSettingsSerializer(serializers.Serializer):
    """Global parameters of the app; field defaults are the documented defaults."""

    enable_letsencrypt = serializers.BooleanField(default=DEFAULTS["enable_letsencrypt"])
    acme_account_email = serializers.EmailField(
        default=DEFAULTS["acme_account_email"], allow_blank=True
    )
    acme_account_storage_path = serializers.CharField(
        default=DEFAULTS["acme_account_storage_path"]
    )
    certificate_renewal_threshold = serializers.IntegerField(
        default=DEFAULTS["certificate_renewal_threshold"],
        min_value=1,
        error_messages={"min_value": _("Renew at least 1 day before expiry (30 is recommended).")},
    )

    enable_alert_emails = serializers.BooleanField(default=DEFAULTS["enable_alert_emails"])
    alert_recipients = serializers.CharField(
        default=DEFAULTS["alert_recipients"], allow_blank=True, max_length=2000
    )

    def validate_alert_recipients(self, value: str) -> str:
        return validate_recipients(value)

    def validate_acme_account_storage_path(self, value: str) -> str:
        return validate_storage_path(value)

    def validate(self, data: dict) -> dict:
        if data.get("enable_letsencrypt") and not data.get("acme_account_email"):
            raise serializers.ValidationError(
                {
                    "acme_account_email": _(
                        "Let's Encrypt needs a contact email: enter the address of the "
                        "person responsible for these certificates."
                    )
                }
            )
        return data

    def post_save(self, request) -> None:
        """Called by Modoboa's parameters API after saving: provision what now can be."""
        if self.validated_data.get("enable_letsencrypt"):
            from .services import provision_missing

            provision_missing()


def register() -> None:
    """Add the app's parameters to Modoboa's registry (called from AppConfig.ready)."""
    from modoboa.parameters import tools as param_tools

    param_tools.registry.add(
        "global",
        APP,
        _("Virtual hosts"),
        STRUCT,
        VirtualHostsSettingsSerializer,
        is_extension=True,
    )

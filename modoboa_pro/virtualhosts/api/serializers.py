"""API v2 serializers for virtual hosts."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rest_framework import serializers
from rest_framework.settings import api_settings

from .. import conf, domain_names, presenters
from ..errors import InvalidHostname
from ..hostnames import normalize_hostname
from ..models import VirtualHost, VirtualHostEvent, validate_acme_profile
from . import permissions


class VirtualHostEventSerializer(serializers.ModelSerializer):
    """One step of a run: what ran, how it ended, when and for how long."""

    class Meta:
        model = VirtualHostEvent
        fields = ("step", "outcome", "started_at", "duration", "message", "run_id")
        read_only_fields = fields


class CertificateSerializer(serializers.Serializer):
    """The certificate recorded by the last successful run."""

    serial = serializers.CharField()
    issuer = serializers.CharField()
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()
    days_left = serializers.IntegerField(allow_null=True)
    lifetime_left = serializers.FloatField(allow_null=True)
    state = serializers.CharField()
    renewal_due_at = serializers.DateTimeField()


# How many unknown field names an error quotes: a body with thousands is still one line.
UNKNOWN_FIELDS_SHOWN = 5


def json_type(value: object) -> str:
    """What a client sent, in words: "a number", "an array"... (JSON's names)."""
    if value is None:
        return "null"
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, _("a boolean")),  # before int: True is an int in Python
        (str, _("a string")),
        (int, _("a number")),
        (float, _("a decimal number")),
        (Mapping, _("an object")),
        (list, _("an array")),
    )
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


class HostnameField(serializers.Field):
    """A hostname sent as a JSON string, stored as ``normalize_hostname`` returns it."""

    default_error_messages = {
        "required": gettext_lazy('The hostname is required, e.g. "www.example.com".'),
        "null": gettext_lazy(
            'Send the hostname as a JSON string, e.g. "www.example.com", not null.'
        ),
        "type": gettext_lazy(
            'Send the hostname as a JSON string, e.g. "www.example.com", not {type}.'
        ),
    }

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("type", type=json_type(data))
        try:
            return normalize_hostname(data)
        except InvalidHostname as err:
            raise serializers.ValidationError(err.message, code="invalid_hostname") from err

    def to_representation(self, value: str) -> str:
        return value


class StrictBooleanField(serializers.BooleanField):
    """``true`` or ``false`` only: "false" as a string or 0 would be read as a choice."""

    default_error_messages = {
        "invalid": gettext_lazy("Send true or false (a JSON boolean, without quotes), not {type}."),
        "null": gettext_lazy("Send true or false (a JSON boolean, without quotes), not null."),
    }

    def to_internal_value(self, data: object) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", type=json_type(data))
        return bool(data)


class DomainIdField(serializers.PrimaryKeyRelatedField):
    """A domain's id as a JSON number (or null): "3" or true are not ids."""

    def to_internal_value(self, data: object) -> Any:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=json_type(data))
        return super().to_internal_value(data)


class AcmeProfileField(serializers.CharField):
    """An ACME profile name as a JSON string; "" (or null) for the default."""

    default_error_messages = {
        "invalid": gettext_lazy(
            'Send the ACME profile as a JSON string, e.g. "tlsserver" ("" for the default).'
        ),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False,
            allow_blank=True,
            allow_null=True,
            max_length=None,  # validate_acme_profile says what is wrong, length included
            validators=[validate_acme_profile],
            **kwargs,
        )

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(data).strip()

    def validate_empty_values(self, data: object) -> tuple[bool, object]:
        if data is None:
            return True, ""
        return super().validate_empty_values(data)


class StrictInput:
    """A body must be a JSON object holding only the fields the client may write."""

    writable: tuple[str, ...] = ()
    example = ""  # a valid body, quoted when the body is not an object

    def run_validation(self, data: object = serializers.empty) -> Any:
        if data is None:  # a JSON null body
            raise self._invalid(self._object_expected(data))
        return super().run_validation(data)  # type: ignore[misc]

    def to_internal_value(self, data: object) -> Any:
        if not isinstance(data, Mapping):
            raise self._invalid(self._object_expected(data))
        unknown = sorted(str(key) for key in data if key not in self.writable)
        if unknown:
            shown = ", ".join(repr(key[:40]) for key in unknown[:UNKNOWN_FIELDS_SHOWN])
            more = len(unknown) - UNKNOWN_FIELDS_SHOWN
            if more > 0:
                shown += _(" and %(count)d more") % {"count": more}
            raise self._invalid(
                _("Unknown field(s) %(fields)s: send only %(writable)s.")
                % {"fields": shown, "writable": ", ".join(self.writable)}
            )
        return super().to_internal_value(data)  # type: ignore[misc]

    def _object_expected(self, data: object) -> str:
        return _("Send a JSON object such as %(example)s, not %(type)s.") % {
            "example": self.example,
            "type": json_type(data),
        }

    @staticmethod
    def _invalid(message: str) -> serializers.ValidationError:
        return serializers.ValidationError(
            {api_settings.NON_FIELD_ERRORS_KEY: [message]}, code="invalid"
        )


def _domain_hostname(name: str) -> str:
    try:
        return normalize_hostname(name)
    except InvalidHostname:
        return name.lower()


class VirtualHostSerializer(StrictInput, serializers.ModelSerializer):
    """A host with its status, certificate, planned next run and recent history.

    Writable on creation: ``hostname``, ``enabled`` and ``domain`` (the id of
    a Modoboa domain the caller administers), with their JSON types; any other
    field is refused rather than ignored (a typo such as ``enable`` would
    otherwise create an enabled host).
    """

    writable = ("hostname", "enabled", "domain", "acme_profile", "serves_mail")
    example = '{"hostname": "www.example.com", "enabled": true, "domain": 3}'

    # Declared, so no unique validator: services.create_virtualhost checks the normalised name.
    hostname = HostnameField()
    enabled = StrictBooleanField(required=False)
    domain = DomainIdField(
        queryset=permissions.domains_for(None),  # none; the caller's domains in get_fields
        required=False,
        allow_null=True,
        error_messages={
            "does_not_exist": _("No domain you administer has the id {pk_value}."),
            "incorrect_type": gettext_lazy(
                "Send the domain's id as a whole number (or null), not {data_type}."
            ),
        },
    )
    acme_profile = AcmeProfileField()
    # Its certificate also goes to Postfix and Dovecot, by SNI (docs/mail.md).
    serves_mail = StrictBooleanField(required=False)
    domain_name = serializers.SerializerMethodField()
    site = serializers.CharField(read_only=True)
    current_step = serializers.SerializerMethodField()
    certificate = serializers.SerializerMethodField()
    next_action = serializers.SerializerMethodField()
    planned_renewal_at = serializers.SerializerMethodField()
    renewal_source = serializers.SerializerMethodField()
    renewal_explanation_url = serializers.SerializerMethodField()
    history = serializers.SerializerMethodField()

    class Meta:
        model = VirtualHost
        fields = (
            "id",
            "hostname",
            "enabled",
            "domain",
            "domain_name",
            "acme_profile",
            "site",
            "serves_mail",
            "status",
            "current_step",
            "last_error",
            "failed_step",
            "attempts",
            "failing_since",
            "certificate",
            "next_action",
            "next_attempt_at",
            "planned_renewal_at",
            "renewal_source",
            "renewal_explanation_url",
            "last_success_at",
            "created_at",
            "updated_at",
            "history",
        )
        read_only_fields = (
            "id",
            "status",
            "last_error",
            "failed_step",
            "attempts",
            "failing_since",
            "next_attempt_at",
            "last_success_at",
            "created_at",
            "updated_at",
        )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None:
            fields["domain"].queryset = permissions.domains_for(request.user)
        return fields

    def get_domain_name(self, obj: VirtualHost) -> str | None:
        return obj.domain.name if obj.domain_id and obj.domain else None

    def get_current_step(self, obj: VirtualHost) -> str | None:
        return presenters.current_step(obj)

    def get_certificate(self, obj: VirtualHost) -> dict[str, Any] | None:
        threshold = self.context.get("threshold_days")
        if threshold is None:  # read once per answer (the context is shared), not per host
            threshold = int(conf.param("certificate_renewal_threshold"))
            self.context["threshold_days"] = threshold
        cert = presenters.certificate(obj, threshold)
        return CertificateSerializer(cert).data if cert else None

    def get_next_action(self, obj: VirtualHost) -> str | None:
        return presenters.next_action(obj)

    def _renewal_plan(self, obj: VirtualHost) -> tuple[datetime.datetime | None, str | None]:
        # The threshold is read once per answer, not once per host of a list.
        if "threshold_days" not in self.context:
            self.context["threshold_days"] = int(conf.param("certificate_renewal_threshold"))
        return presenters.renewal_plan(obj, self.context["threshold_days"])

    def get_planned_renewal_at(self, obj: VirtualHost) -> str | None:
        when = self._renewal_plan(obj)[0]
        return serializers.DateTimeField().to_representation(when) if when else None

    def get_renewal_source(self, obj: VirtualHost) -> str | None:
        return self._renewal_plan(obj)[1]

    def get_renewal_explanation_url(self, obj: VirtualHost) -> str | None:
        return obj.ari_explanation_url or None

    def get_history(self, obj: VirtualHost) -> list[dict[str, Any]]:
        events = getattr(obj, "recent_events", None)
        if events is None:
            events = presenters.history(obj)
        return VirtualHostEventSerializer(events, many=True).data

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        request = self.context.get("request")
        user = getattr(request, "user", None)
        domain = data.get("domain")
        if domain is None and user is not None and not user.is_superuser:
            raise serializers.ValidationError(
                {"domain": _("Choose the domain this host belongs to (one you administer).")}
            )
        if domain is not None and "hostname" in data:
            parent = _domain_hostname(domain.name)
            name = data["hostname"]
            if name != parent and not name.endswith(f".{parent}"):
                raise serializers.ValidationError(
                    {
                        "hostname": _(
                            "%(name)s is not in the domain %(domain)s: a host linked to a "
                            "domain must be that domain or one of its subdomains."
                        )
                        % {"name": name, "domain": parent}
                    }
                )
        return data


class VirtualHostUpdateSerializer(StrictInput, serializers.ModelSerializer):
    """Partial update: ``enabled`` and ``acme_profile`` can change; a new name needs a new host.

    ``hostname`` and ``domain`` may be sent back unchanged; any other field is refused.
    """

    writable = ("enabled", "acme_profile", "serves_mail", "hostname", "domain")
    example = '{"enabled": false}'

    enabled = StrictBooleanField(required=False)
    acme_profile = AcmeProfileField()
    serves_mail = StrictBooleanField(required=False)

    class Meta:
        model = VirtualHost
        fields = ("enabled", "acme_profile", "serves_mail")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        immutable = sorted(
            key
            for key in ("hostname", "domain")
            if key in self.initial_data and str(self.initial_data[key]) != str(self._current(key))
        )
        if immutable:
            raise serializers.ValidationError(
                {
                    key: _(
                        "This field cannot be changed: delete the virtual host and create "
                        "a new one."
                    )
                    for key in immutable
                }
            )
        if not {"enabled", "acme_profile", "serves_mail"} & set(data):
            raise serializers.ValidationError(
                {
                    "enabled": _(
                        "Send enabled (true or false), acme_profile or serves_mail (true or "
                        "false): they are the only fields you can change."
                    )
                }
            )
        return data

    def _current(self, key: str) -> object:
        if key == "domain":
            return self.instance.domain_id
        return getattr(self.instance, key)


def _domain_field() -> DomainIdField:
    return DomainIdField(
        queryset=permissions.domains_for(None),  # none; the caller's domains in get_fields
        error_messages={
            "does_not_exist": _("No domain you administer has the id {pk_value}."),
            "incorrect_type": gettext_lazy(
                "Send the domain's id as a whole number, not {data_type}."
            ),
            # DRF formats these: braces doubled.
            "required": gettext_lazy('Send the id of the domain, e.g. {{"domain": 3}}.'),
            "null": gettext_lazy('Send the id of the domain, e.g. {{"domain": 3}}.'),
        },
    )


class DomainNamesSerializer(StrictInput, serializers.Serializer):
    """Input of the usual names action: the id of a domain the caller administers."""

    writable = ("domain",)
    example = '{"domain": 3}'

    domain = _domain_field()

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None:
            fields["domain"].queryset = permissions.domains_for(request.user)
        return fields


class NameOutcomeSerializer(serializers.Serializer):
    """What became of one usual name: created, exists (left as it is) or refused."""

    hostname = serializers.CharField()
    site = serializers.CharField()
    serves_mail = serializers.BooleanField()
    outcome = serializers.ChoiceField(
        choices=[domain_names.CREATED, domain_names.EXISTS, domain_names.REFUSED]
    )
    message = serializers.CharField()
    id = serializers.SerializerMethodField()

    def get_id(self, obj: domain_names.NameOutcome) -> int | None:
        visible = self.context.get("visible_ids")
        host = obj.host
        if host is None or (visible is not None and host.pk not in visible):
            return None  # a host of another domain: its name is known, not its record
        return int(host.pk)

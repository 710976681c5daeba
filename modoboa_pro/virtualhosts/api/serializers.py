"""API v2 serializers for virtual hosts."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _
from rest_framework import serializers

from .. import presenters
from ..errors import InvalidHostname
from ..hostnames import normalize_hostname
from ..models import VirtualHost, VirtualHostEvent
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


def _domain_hostname(name: str) -> str:
    try:
        return normalize_hostname(name)
    except InvalidHostname:
        return name.lower()


class VirtualHostSerializer(serializers.ModelSerializer):
    """A host with its status, certificate, planned next run and recent history.

    Writable on creation: ``hostname``, ``enabled`` and ``domain`` (the id of
    a Modoboa domain the caller administers).
    """

    domain = serializers.PrimaryKeyRelatedField(
        queryset=permissions.domains_for(None),  # none; the caller's domains in get_fields
        required=False,
        allow_null=True,
        error_messages={
            "does_not_exist": _("No domain you administer has the id {pk_value}."),
        },
    )
    domain_name = serializers.SerializerMethodField()
    current_step = serializers.SerializerMethodField()
    certificate = serializers.SerializerMethodField()
    next_action = serializers.SerializerMethodField()
    history = serializers.SerializerMethodField()

    class Meta:
        model = VirtualHost
        fields = (
            "id",
            "hostname",
            "enabled",
            "domain",
            "domain_name",
            "status",
            "current_step",
            "last_error",
            "failed_step",
            "attempts",
            "certificate",
            "next_action",
            "next_attempt_at",
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
            "next_attempt_at",
            "last_success_at",
            "created_at",
            "updated_at",
        )
        # Uniqueness is checked by services.create_virtualhost, on the normalised name.
        extra_kwargs: dict[str, dict[str, Any]] = {"hostname": {"validators": []}}

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
        cert = presenters.certificate(obj)
        return CertificateSerializer(cert).data if cert else None

    def get_next_action(self, obj: VirtualHost) -> str | None:
        return presenters.next_action(obj)

    def get_history(self, obj: VirtualHost) -> list[dict[str, Any]]:
        events = getattr(obj, "recent_events", None)
        if events is None:
            events = presenters.history(obj)
        return VirtualHostEventSerializer(events, many=True).data

    def validate_hostname(self, value: str) -> str:
        try:
            return normalize_hostname(value)
        except InvalidHostname as err:
            raise serializers.ValidationError(err.message) from err

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


class VirtualHostUpdateSerializer(serializers.ModelSerializer):
    """Partial update: only ``enabled`` can change; a new name needs a new host."""

    class Meta:
        model = VirtualHost
        fields = ("enabled",)

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
        if "enabled" not in data:
            raise serializers.ValidationError(
                {"enabled": _("Send enabled (true or false): it is the only field you can change.")}
            )
        return data

    def _current(self, key: str) -> object:
        if key == "domain":
            return self.instance.domain_id
        return getattr(self.instance, key)

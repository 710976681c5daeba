"""API v2 serializers for virtual hosts."""

from __future__ import annotations

from rest_framework import serializers

from ..errors import InvalidHostname
from ..hostnames import normalize_hostname
from ..models import VirtualHost, VirtualHostEvent


class VirtualHostEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = VirtualHostEvent
        fields = ("step", "outcome", "started_at", "duration", "message", "run_id")


class VirtualHostSerializer(serializers.ModelSerializer):
    """A host with its status, certificate and recent history."""

    days_left = serializers.SerializerMethodField()

    class Meta:
        model = VirtualHost
        fields = (
            "id",
            "hostname",
            "enabled",
            "domain",
            "status",
            "last_error",
            "failed_step",
            "attempts",
            "next_attempt_at",
            "cert_serial",
            "cert_issuer",
            "cert_not_before",
            "cert_not_after",
            "days_left",
            "last_success_at",
            "created_at",
            "updated_at",
        )
        read_only_fields = tuple(f for f in fields if f not in ("hostname", "enabled", "domain"))

    def get_days_left(self, obj: VirtualHost) -> int | None:
        return obj.days_left()

    def validate_hostname(self, value: str) -> str:
        try:
            name = normalize_hostname(value)
        except InvalidHostname as err:
            raise serializers.ValidationError(err.message) from err
        queryset = VirtualHost.objects.filter(hostname=name)
        if self.instance is not None:
            queryset = queryset.exclude(pk=self.instance.pk)
        if queryset.exists():
            raise serializers.ValidationError(f"A virtual host named {name} already exists.")
        return name

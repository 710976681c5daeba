"""API v2 viewsets for virtual hosts."""

from __future__ import annotations

from modoboa.lib.permissions import IsSuperUser
from rest_framework import mixins, permissions, viewsets

from .. import services
from ..models import VirtualHost
from . import serializers


class VirtualHostViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Virtual hosts: list, create, retrieve, update, delete."""

    permission_classes = (permissions.IsAuthenticated, IsSuperUser)
    serializer_class = serializers.VirtualHostSerializer
    queryset = VirtualHost.objects.select_related("domain")
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_create(self, serializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.create_virtualhost(
            data["hostname"], enabled=data.get("enabled", True), domain=data.get("domain")
        )

    def perform_update(self, serializer) -> None:
        host = serializer.instance
        if "enabled" in serializer.validated_data:
            services.set_enabled(host, serializer.validated_data["enabled"])

    def perform_destroy(self, instance: VirtualHost) -> None:
        services.delete_virtualhost(instance)

"""Who may see and act on which virtual hosts.

SuperAdmins manage every host. Resellers and DomainAdmins manage the hosts
linked to a Modoboa domain they administer (Modoboa's own object access:
``Domain.objects.get_for_admin``). SimpleUsers have no access.
"""

from __future__ import annotations

from django.db.models import QuerySet
from modoboa.core import constants as core_constants
from rest_framework import permissions

from ..models import VirtualHost

ADMIN_ROLES = (
    core_constants.SUPERADMINS_ROLE[0],
    core_constants.RESELLERS_ROLE[0],
    core_constants.DOMAINADMINS_ROLE[0],
)


def is_admin(user) -> bool:
    return bool(user and user.is_authenticated and (user.is_superuser or user.role in ADMIN_ROLES))


def domains_for(user) -> QuerySet:
    """The Modoboa domains ``user`` administers (all of them for a SuperAdmin; none without one)."""
    from modoboa.admin.models import Domain

    if user is None or not is_admin(user):
        return Domain.objects.none()
    return Domain.objects.get_for_admin(user)


def hosts_for(user) -> QuerySet:
    """The virtual hosts ``user`` may see and act on."""
    if not is_admin(user):
        return VirtualHost.objects.none()
    if user.is_superuser:
        return VirtualHost.objects.all()
    return VirtualHost.objects.filter(domain__in=domains_for(user).values("pk"))


class IsVirtualHostAdmin(permissions.BasePermission):
    """SuperAdmins, Resellers and DomainAdmins; the queryset narrows what they reach."""

    message = "Only administrators can manage virtual hosts."

    def has_permission(self, request, view) -> bool:
        return is_admin(request.user)


class IsSuperAdmin(permissions.BasePermission):
    """SuperAdmins only: what names every host of the instance (the metrics)."""

    message = "Only SuperAdmins can read the metrics: they name every virtual host."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_superuser)

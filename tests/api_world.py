"""A small Modoboa world for the API tests: two domains, three hosts, one client per role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework.test import APIClient

from modoboa_pro.virtualhosts.models import VirtualHost


@dataclass
class World:
    """Two domains, one host in each and one without a domain, a user per role."""

    clients: dict[str, APIClient]
    mine: VirtualHost  # www.example.test, in the domain the reseller and domain admin manage
    foreign: VirtualHost  # www.other.test, in a domain only SuperAdmins reach
    orphan: VirtualHost  # no domain: SuperAdmins only
    domain: Any
    other_domain: Any

    def api(self, role: str) -> APIClient:
        return self.clients[role]


def make_world() -> World:
    from django.contrib.auth.models import Group
    from modoboa.admin.models import Domain
    from modoboa.core.models import User
    from modoboa.lib.permissions import grant_access_to_object
    from rest_framework.authtoken.models import Token

    superadmin = User.objects.get(username="admin")
    domain = Domain.objects.create(name="example.test", quota=0, default_mailbox_quota=0)
    other = Domain.objects.create(name="other.test", quota=0, default_mailbox_quota=0)
    for dom in (domain, other):
        grant_access_to_object(superadmin, dom, is_owner=True)

    def user(username: str, role: str) -> User:
        account = User.objects.create(username=username, email=username)
        account.groups.add(Group.objects.get(name=role))
        return account

    reseller = user("reseller@example.test", "Resellers")
    grant_access_to_object(reseller, domain, is_owner=True)
    domain_admin = user("admin@example.test", "DomainAdmins")
    domain.add_admin(domain_admin)
    simple = user("user@example.test", "SimpleUsers")

    clients = {"anonymous": APIClient()}
    for role, account in (
        ("SuperAdmins", superadmin),
        ("Resellers", reseller),
        ("DomainAdmins", domain_admin),
        ("SimpleUsers", simple),
    ):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=account).key}")
        clients[role] = client
    return World(
        clients=clients,
        mine=VirtualHost.objects.create(hostname="www.example.test", domain=domain),
        foreign=VirtualHost.objects.create(hostname="www.other.test", domain=other),
        orphan=VirtualHost.objects.create(hostname="orphan.test"),
        domain=domain,
        other_domain=other,
    )

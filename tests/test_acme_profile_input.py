"""A host's ACME profile through the API and the CLI: read, written, validated, nothing queued."""

from __future__ import annotations

import pytest

from modoboa_pro.virtualhosts.models import VirtualHost

from .api_world import World
from .test_api import URL
from .test_cli import command, configured, queued, run  # noqa: F401 - fixtures

BAD = [
    ("tls server", "is not an ACME profile name"),
    ("../etc", "is not an ACME profile name"),
    ("x" * 65, "is not an ACME profile name"),
    (45, "Send the ACME profile as a JSON string"),
    (["tlsserver"], "Send the ACME profile as a JSON string"),
]


@pytest.fixture
def admin(world: World, django_capture_on_commit_callbacks):
    """Requests as a SuperAdmin, with what they schedule on commit run."""

    def request(method: str, url: str, body: dict):
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(world.api("SuperAdmins"), method)(url, body, format="json")

    return request


def test_created_with_a_profile_then_changed_and_cleared(world: World, admin):
    created = admin("post", URL, {"hostname": "p.example.test", "acme_profile": "tlsserver"})
    assert created.status_code == 201, created.content
    assert created.json()["acme_profile"] == "tlsserver"
    host = VirtualHost.objects.get(hostname="p.example.test")
    assert host.acme_profile == "tlsserver"
    jobs_before = len(queued())

    changed = admin("patch", f"{URL}{host.pk}/", {"acme_profile": "shortlived"})
    assert changed.status_code == 200, changed.content
    assert changed.json()["acme_profile"] == "shortlived" and changed.json()["enabled"] is True
    # A new profile takes effect at the next order: the certificate in place is kept.
    assert len(queued()) == jobs_before

    cleared = admin("patch", f"{URL}{host.pk}/", {"acme_profile": None})
    assert cleared.status_code == 200 and cleared.json()["acme_profile"] == ""
    assert admin("get", f"{URL}{host.pk}/", {}).json()["acme_profile"] == ""


@pytest.mark.parametrize(("value", "message"), BAD)
def test_a_malformed_profile_is_refused_saying_why(world: World, admin, value, message):
    created = admin("post", URL, {"hostname": "bad.example.test", "acme_profile": value})
    assert created.status_code == 400
    assert message in " ".join(created.json()["acme_profile"])
    assert not VirtualHost.objects.filter(hostname="bad.example.test").exists()

    changed = admin("patch", f"{URL}{world.orphan.pk}/", {"acme_profile": value})
    assert changed.status_code == 400
    assert message in " ".join(changed.json()["acme_profile"])
    world.orphan.refresh_from_db()
    assert world.orphan.acme_profile == ""


def test_cli_add_with_a_profile(configured, redis_server, django_capture_on_commit_callbacks):  # noqa: F811
    with django_capture_on_commit_callbacks(execute=True):
        code, out, _ = run("add", "cli.example.test", "--profile", "shortlived")
    assert code == 0, out
    assert VirtualHost.objects.get(hostname="cli.example.test").acme_profile == "shortlived"

    code, _, message = run("add", "bad.example.test", "--profile", "short lived")
    assert code == command.EXIT_USAGE and "is not an ACME profile name" in message
    assert not VirtualHost.objects.filter(hostname="bad.example.test").exists()


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("ACME_PROFILE", "short lived", "virtualhosts.E011"),
        ("ACME_PROFILE", 6, "virtualhosts.E011"),
        ("VIRTUALHOSTS_PREFLIGHT_RESOLVER", "dns.example.org:53", "virtualhosts.E012"),
        ("VIRTUALHOSTS_PREFLIGHT_RESOLVER", "127.0.0.1:99999", "virtualhosts.E012"),
    ],
)
def test_system_checks_name_a_malformed_profile_or_resolver(settings, setting, value, check_id):
    from modoboa_pro.virtualhosts.checks import check_virtualhosts

    setattr(settings, setting, value)
    assert [m for m in check_virtualhosts() if m.id == check_id and setting in m.msg]
    setattr(settings, setting, None)
    assert not [m for m in check_virtualhosts() if m.id == check_id]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_the_resolver_setting_is_host_and_port(spec, parsed):
    from modoboa_pro.virtualhosts.adapters import preflight

    assert preflight.parse_resolver(spec) == parsed

"""Hostname validation: what may reach a file path or an nginx config."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from modoboa_pro.virtualhosts.errors import InvalidHostname
from modoboa_pro.virtualhosts.hostnames import normalize_hostname
from modoboa_pro.virtualhosts.models import VirtualHost


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("  mail.example.org  ", "mail.example.org"),
        ("example.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("straße.example", "xn--strae-oqa.example"),  # IDNA 2008, not IDNA 2003's strasse
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("x." + "a" * 63 + ".example", "x." + "a" * 63 + ".example"),
    ],
)
def test_valid_names_are_normalised(given: str, stored: str) -> None:
    assert normalize_hostname(given) == stored


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "Enter a hostname"),
        ("localhost", "not fully qualified"),
        ("*.example.com", "Wildcard certificates are not supported"),
        ("192.0.2.1", "An IP address cannot be a virtual host"),
        ("::1", "An IP address cannot be a virtual host"),
        ("../../etc/passwd", "remove '/'"),
        ("a/b.example.com", "remove '/'"),
        ("x.example.com;include /etc", "remove"),
        ("x{.example.com", "remove '{'"),
        ('x".example.com', "remove"),
        ("x y.example.com", "remove space"),
        ("x\n.example.com", "remove"),
        ("x\x00.example.com", "remove"),
        ("a..example.com", "empty labels"),
        (".example.com", "empty labels"),
        ("-a.example.com", "not starting or ending with a hyphen"),
        ("a_b.example.com", "remove '_'"),
        ("a" * 64 + ".example.com", "at most 63"),
        (".".join(["a" * 60] * 5) + ".com", "at most 253"),
        ("example.123", "top-level domain"),
    ],
)
def test_invalid_names_say_what_to_fix(given: str, message: str) -> None:
    with pytest.raises(InvalidHostname) as info:
        normalize_hostname(given)
    assert message in str(info.value)


@pytest.mark.django_db
def test_the_model_refuses_an_invalid_name_even_through_the_orm() -> None:
    with pytest.raises(InvalidHostname):
        VirtualHost.objects.create(hostname="bad;name.example.com")
    assert not VirtualHost.objects.exists()
    host = VirtualHost(hostname="x y.example.com")
    with pytest.raises(ValidationError) as info:
        host.full_clean()
    assert "remove space" in str(info.value)

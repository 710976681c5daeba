"""`serves_mail` through the API (create, PATCH) and the command line (add --mail, mail on|off,
show, list): what is stored, what is shown, which run is queued."""

from __future__ import annotations

import pytest

from modoboa_pro.virtualhosts.models import VirtualHost

from ..api_world import World
from ..test_api import URL, queued
from ..test_cli import run

pytestmark = pytest.mark.mail


@pytest.fixture
def call(django_capture_on_commit_callbacks):
    def send(client, method: str, url: str, data: dict | None = None):
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(client, method)(url, data, format="json")

    return send


def test_the_api_creates_and_changes_a_mail_host(world: World, call):
    api = world.api("DomainAdmins")
    body = {"hostname": "mail.example.test", "domain": world.domain.pk, "serves_mail": True}
    response = call(api, "post", URL, body)
    assert response.status_code == 201, response.content
    assert response.json()["serves_mail"] is True
    host = VirtualHost.objects.get(hostname="mail.example.test")
    assert host.serves_mail is True

    response = call(api, "patch", f"{URL}{world.mine.pk}/", {"serves_mail": True})
    assert response.status_code == 200, response.content
    assert response.json()["serves_mail"] is True
    # Its run is queued: it deploys the certificate to Postfix and Dovecot.
    assert ("provision_virtualhost", (world.mine.pk,)) in queued()

    response = call(api, "patch", f"{URL}{world.mine.pk}/", {"serves_mail": "yes"})
    assert response.status_code == 400
    response = call(api, "patch", f"{URL}{world.mine.pk}/", {"serves_mail": False})
    assert response.json()["serves_mail"] is False
    assert api.get(f"{URL}{world.mine.pk}/").json()["serves_mail"] is False


def test_the_command_line_adds_marks_and_shows_a_mail_host(
    world: World, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        code, out, _ = run("add", "mail.example.test", "--mail")
    assert code == 0 and "Created mail.example.test (serves mail)" in out
    assert VirtualHost.objects.get(hostname="mail.example.test").serves_mail

    with django_capture_on_commit_callbacks(execute=True):
        code, out, _ = run("mail", "www.example.test", "on")
    assert "www.example.test serves mail" in out
    world.mine.refresh_from_db()
    assert world.mine.serves_mail

    out = run("show", "www.example.test")[1]
    assert "Serves mail" in out and "yes (Postfix and Dovecot, by SNI)" in out
    out = run("list")[1]
    assert "www.example.test (mail)" in out and "www.other.test (mail)" not in out
    assert '"serves_mail": true' in run("show", "www.example.test", "--json")[1]

    with django_capture_on_commit_callbacks(execute=True):
        code, out, _ = run("mail", "www.example.test", "off")
    assert "no longer serves mail" in out
    world.mine.refresh_from_db()
    assert not world.mine.serves_mail

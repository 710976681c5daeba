"""A domain's usual names: the sites they render, the API action, the CLI, the service."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.context import Settings
from modoboa_pro.virtualhosts.errors import ConfigurationError
from modoboa_pro.virtualhosts.models import VirtualHost
from modoboa_pro.virtualhosts.rendering import render_http_only, render_https

from .api_world import World
from .conftest import set_parameters
from .test_api import queued, snapshot
from .test_rendering import assert_nginx_accepts, context

pytestmark = pytest.mark.names

URL = "/api/v2/virtualhosts/domain-names/"
THUNDERBIRD = "/mail/config-v1.1.xml"
THUNDERBIRD_WELL_KNOWN = "/.well-known/autoconfig/mail/config-v1.1.xml"


# -- the sites ----------------------------------------------------------------------------


def _locations(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("location")]


@pytest.mark.parametrize("render", [render_http_only, render_https])
def test_an_autoconfig_site_forwards_only_thunderbirds_paths(render) -> None:
    text = render(context(site=constants.SITE_AUTOCONFIG))
    assert f"location = {THUNDERBIRD} {{" in text
    assert f"location = {THUNDERBIRD_WELL_KNOWN} {{" in text
    assert text.count("rewrite ^ /mail/config-v1.1.xml break;") == 2
    # Everything else, the web UI included, is not served under this name.
    served = text.split("ssl_certificate")[-1]  # the HTTPS server (the whole HTTP-only site)
    assert "location / {\n        return 404;" in served
    assert text.count("uwsgi_pass") == 2


def test_an_autodiscover_site_forwards_outlooks_path_in_any_case() -> None:
    text = render_https(context(site=constants.SITE_AUTODISCOVER))
    assert 'location ~* "^/autodiscover/autodiscover\\.xml$" {' in text
    assert "rewrite ^ /autodiscover/autodiscover.xml break;" in text
    assert THUNDERBIRD not in text
    assert text.count("uwsgi_pass") == 1


def test_a_web_site_still_forwards_everything() -> None:
    text = render_https(context())
    assert _locations(text)[-1] == "location / {"
    assert "return 404;\n    }\n}" not in text.split("ssl_certificate")[-1]
    assert "autodiscover" not in text and "config-v1.1" not in text


def test_autoconfig_sites_use_modoboas_url_when_set(tmp_path: Path) -> None:
    values = dict(
        letsencrypt=True,
        email="",
        storage_root=tmp_path,
        threshold_days=30,
        directory_url="",
        ca_bundle=None,
        key_type="ecdsa-p256",
        order_timeout=10,
        conf_dir=tmp_path,
        http_port=80,
        https_port=443,
        listen_address="",
        upstream="unix:/run/uwsgi/app/modoboa_instance/socket",
        upstream_protocol="uwsgi",
        verify_address="127.0.0.1",
    )
    unset = Settings(**values)  # type: ignore[arg-type]
    fallback = unset.site_context("autoconfig.example.test", constants.SITE_AUTOCONFIG)
    assert fallback.upstream == values["upstream"]
    s = Settings(
        **values,  # type: ignore[arg-type]
        autoconfig_upstream="http://127.0.0.1:8000",
        autoconfig_upstream_protocol="http",
    )
    web = s.site_context("www.example.test")
    assert (web.upstream, web.upstream_protocol) == (values["upstream"], "uwsgi")
    for site in (constants.SITE_AUTOCONFIG, constants.SITE_AUTODISCOVER):
        text = render_https(s.site_context(f"{site}.example.test", site))
        assert "proxy_pass http://127.0.0.1:8000;" in text and "uwsgi_pass" not in text


@pytest.mark.parametrize(
    ("upstream", "protocol"),
    [
        ("http://127.0.0.1:8000/autoconfig", "http"),  # a path: rewrites would drop it
        ("127.0.0.1:8000", "http"),  # no scheme: nginx -t refuses it
        ("http://127.0.0.1:8000", "uwsgi"),
        ("http://127.0.0.1:8000;return 200", "http"),
        ("unix:/run/x.sock", "fastcgi"),
    ],
)
def test_a_bad_modoboa_url_never_reaches_the_config(upstream: str, protocol: str) -> None:
    ctx = context(site=constants.SITE_AUTOCONFIG, upstream=upstream, upstream_protocol=protocol)
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_AUTOCONFIG_UPSTREAM"):
        render_https(ctx)


def test_an_unknown_site_kind_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="site kind"):
        render_http_only(context(site="webmail"))


def test_both_kinds_pass_nginx_test(tmp_path: Path) -> None:
    """As rendered, for both protocols and both phases, the real `nginx -t` accepts them."""
    from modoboa_pro.testing import make_self_signed_leaf

    fullchain, privkey = make_self_signed_leaf(tmp_path, ["autoconfig.example.test"])
    shutil.copy("/etc/nginx/uwsgi_params", tmp_path / "uwsgi_params")
    sites = ""
    kinds = [
        (constants.SITE_AUTOCONFIG, "http://127.0.0.1:8000", "http"),
        (constants.SITE_AUTODISCOVER, "unix:/run/uwsgi/modoboa.sock", "uwsgi"),
    ]
    for port, (site, upstream, protocol) in enumerate(kinds):
        values = dict(
            listen_address="127.0.0.1",
            https_port=18543 + port,
            fullchain=fullchain,
            privkey=privkey,
            upstream=upstream,
            upstream_protocol=protocol,
            webroot=tmp_path / "webroot",
            site=site,
        )
        name = f"{site}.example.test"
        sites += render_https(context(hostname=name, http_port=18180, **values))
        sites += render_http_only(context(hostname=name, http_port=18190, **values))
    assert_nginx_accepts(tmp_path, sites)


# -- the API ------------------------------------------------------------------------------


@pytest.fixture
def call(django_capture_on_commit_callbacks):
    """Send a request and run what it scheduled on commit (as tests/test_api.py does)."""

    def send(client, method: str, url: str, data: object = None):
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(client, method)(url, data, format="json")

    return send


def _post(call, world: World, role: str, body: object):
    return call(world.api(role), "post", URL, body)


def test_a_domain_admin_creates_the_three_names_of_their_domain(world: World, call):
    response = _post(call, world, "DomainAdmins", {"domain": world.domain.pk})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["domain_name"] == "example.test"
    assert body["summary"] == "3 created, 0 already existed, 0 refused"
    got = {r["hostname"]: (r["site"], r["serves_mail"], r["outcome"]) for r in body["results"]}
    assert got == {
        "mail.example.test": ("web", True, "created"),
        "autoconfig.example.test": ("autoconfig", False, "created"),
        "autodiscover.example.test": ("autodiscover", False, "created"),
    }
    hosts = VirtualHost.objects.filter(hostname__in=got)
    assert {h.hostname: (h.site, h.serves_mail, h.domain_id) for h in hosts} == {
        name: (site, mail, world.domain.pk) for name, (site, mail, _) in got.items()
    }
    # Each one provisioned by its own job: one that fails does not hold the others.
    assert sorted(args[0] for name, args in queued() if name == "provision_virtualhost") == sorted(
        h.pk for h in hosts
    )
    for result in body["results"]:
        assert result["id"] in {h.pk for h in hosts}
        assert "provisioning queued" in result["message"]
    # A host's representation says what its site serves.
    detail = world.api("DomainAdmins").get(f"/api/v2/virtualhosts/{body['results'][1]['id']}/")
    assert detail.json()["site"] == "autoconfig"


def test_names_that_exist_are_left_as_they_are(world: World, call):
    VirtualHost.objects.create(hostname="mail.example.test", domain=world.domain)
    response = _post(call, world, "Resellers", {"domain": world.domain.pk})
    assert response.status_code == 201, response.content
    outcomes = {r["hostname"]: r["outcome"] for r in response.json()["results"]}
    assert outcomes["mail.example.test"] == "exists"
    mail = VirtualHost.objects.get(hostname="mail.example.test")
    assert (mail.serves_mail, mail.site) == (False, "web")  # not changed behind the admin's back
    again = _post(call, world, "Resellers", {"domain": world.domain.pk})
    assert again.status_code == 200
    assert again.json()["summary"] == "0 created, 3 already existed, 0 refused"
    assert VirtualHost.objects.filter(domain=world.domain).count() == 4  # www. + the three


def test_an_existing_name_of_another_domain_is_reported_without_its_record(world: World, call):
    VirtualHost.objects.create(hostname="autoconfig.example.test", domain=world.other_domain)
    response = _post(call, world, "DomainAdmins", {"domain": world.domain.pk})
    result = next(r for r in response.json()["results"] if r["hostname"].startswith("autoc"))
    assert (result["outcome"], result["id"]) == ("exists", None)


def test_a_refused_name_answers_207_with_its_reason(world: World, call):
    from modoboa.admin.models import Domain

    # A name Modoboa stored before its rules, which is not a valid host name.
    bad = Domain.objects.create(name="bad_name.test", quota=0, default_mailbox_quota=0)
    response = _post(call, world, "SuperAdmins", {"domain": bad.pk})
    assert response.status_code == 207, response.content
    for result in response.json()["results"]:
        assert result["outcome"] == "refused" and result["id"] is None
        assert "_" in result["message"] or "character" in result["message"]
    assert not VirtualHost.objects.filter(hostname__endswith="bad_name.test").exists()


@pytest.mark.parametrize(
    ("role", "which", "code"),
    [
        ("anonymous", "domain", 401),
        ("SimpleUsers", "domain", 403),
        ("DomainAdmins", "other_domain", 400),
        ("Resellers", "other_domain", 400),
    ],
)
def test_only_admins_of_the_domain_may_create_its_names(world: World, call, role, which, code):
    before = snapshot()
    response = _post(call, world, role, {"domain": getattr(world, which).pk})
    assert response.status_code == code, response.content
    if code == 400:
        assert "No domain you administer" in response.json()["domain"][0]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, 'e.g. {"domain": 3}'),
        ({"domain": "3"}, "whole number"),
        ({"domain": 3, "names": ["www"]}, "Unknown field"),
        ([], "JSON object"),
    ],
)
def test_bad_input_is_refused_with_what_to_send(world: World, call, body, fragment):
    response = _post(call, world, "SuperAdmins", body)
    assert response.status_code == 400
    assert fragment in str(response.json())


def test_without_account_email_nothing_is_created(world: World, call):
    set_parameters(acme_account_email="")
    response = _post(call, world, "SuperAdmins", {"domain": world.domain.pk})
    assert response.status_code == 400
    assert "ACME account email" in response.json()["detail"]
    assert not VirtualHost.objects.filter(hostname__startswith="mail.").exists()


def test_redis_down_answers_503_and_creates_nothing(world, call, redis_down):
    before = VirtualHost.objects.count()
    response = _post(call, world, "SuperAdmins", {"domain": world.domain.pk})
    assert response.status_code == 503
    assert "Redis" in response.json()["detail"]
    assert VirtualHost.objects.count() == before


# -- the service and the CLI --------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    out = io.StringIO()
    try:
        call_command("virtualhosts", *args, stdout=out)
    except CommandError as err:
        return err.returncode, out.getvalue(), str(err)
    return 0, out.getvalue(), ""


def test_cli_adds_the_names_then_reports_them_as_existing(
    world, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        code, out, err = run("add-domain-names", "Example.TEST")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["HOSTNAME", "SITE", "OUTCOME", "MESSAGE"]
    assert lines[2].split()[:3] == ["mail.example.test", "web", "created"]
    assert lines[3].split()[:3] == ["autoconfig.example.test", "autoconfig", "created"]
    assert lines[4].split()[:3] == ["autodiscover.example.test", "autodiscover", "created"]
    assert len([name for name, _ in queued() if name == "provision_virtualhost"]) == 3

    code, out, _ = run("add-domain-names", "example.test", "--json")
    assert code == 0
    assert [r["outcome"] for r in json.loads(out)] == ["exists"] * 3
    assert (
        "Site:            autodiscover (the mail clients' paths only)"
        in run("show", "autodiscover.example.test")[1]
    )
    assert "Site:" not in run("show", "mail.example.test")[1]


def test_cli_says_which_names_were_refused(world):
    from modoboa.admin.models import Domain

    Domain.objects.create(name="bad_name.test", quota=0, default_mailbox_quota=0)
    code, out, err = run("add-domain-names", "bad_name.test")
    assert code == 1
    assert "0 created, 0 already existed, 3 refused" in err and "mail.bad_name.test" in err


def test_cli_unknown_domain(world):
    assert run("add-domain-names", "nowhere.test")[0] == 1
    assert run("add-domain-names", "not a domain")[0] == 2


def test_a_name_refused_mid_way_does_not_stop_the_next(world, monkeypatch):
    """Fault seam: the second creation fails in the database; the first and third stay."""
    real = services.create_virtualhost

    def flaky(name: str, **kwargs):
        if name.startswith("autoconfig."):
            from django.core.exceptions import ValidationError

            VirtualHost.objects.create(hostname="half-written.example.test")  # rolled back
            raise ValidationError("the database refused it")
        return real(name, **kwargs)

    monkeypatch.setattr(services, "create_virtualhost", flaky)
    outcomes = services.create_domain_names(world.domain)
    assert [o.outcome for o in outcomes] == ["created", "refused", "created"]
    assert outcomes[1].message == "the database refused it"
    assert not VirtualHost.objects.filter(hostname="half-written.example.test").exists()
    assert VirtualHost.objects.filter(hostname="autodiscover.example.test").exists()


def test_a_name_created_meanwhile_by_another_request_is_reported_as_existing(world, monkeypatch):
    """Fault seam: the unique index refuses mail. (another request won the race)."""
    from django.db import IntegrityError

    real = services.create_virtualhost

    def racing(name: str, **kwargs):
        if name.startswith("mail."):
            raise IntegrityError("UNIQUE constraint failed: virtualhosts_virtualhost.hostname")
        return real(name, **kwargs)

    monkeypatch.setattr(services, "create_virtualhost", racing)
    outcomes = services.create_domain_names(world.domain)
    assert [o.outcome for o in outcomes] == ["exists", "created", "created"]
    assert outcomes[0].message == "mail.example.test already exists; left as it is."

"""API v2 /api/v2/virtualhosts/ through Modoboa's URL routing and token auth."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.adapters import locks
from modoboa_pro.virtualhosts.models import VirtualHost, VirtualHostEvent

from .api_world import World, make_world
from .conftest import FIRST_ISSUANCE_STEPS, Chain, set_parameters

URL = "/api/v2/virtualhosts/"
ROLES = ("anonymous", "SuperAdmins", "Resellers", "DomainAdmins", "SimpleUsers")




def queued() -> list[tuple[str, tuple]]:
    import django_rq

    queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
    return [(job.func_name.rsplit(".", 1)[-1], job.args) for job in queue.get_jobs()]


def snapshot() -> tuple:
    """Everything a request could write: hosts, their history, alarms, queued jobs."""
    from modoboa.admin.models import Alarm

    return (
        list(VirtualHost.objects.order_by("pk").values()),
        VirtualHostEvent.objects.count(),
        list(Alarm.objects.values_list("internal_name", "status")),
        queued(),
    )


@pytest.fixture
def call(django_capture_on_commit_callbacks):
    """Send a request and run what it scheduled on commit (the test's transaction never
    commits), so the jobs a request enqueues really land in Redis."""

    def send(client: APIClient, method: str, url: str, data: dict | None = None):
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(client, method)(url, data, format="json")

    return send


# -- the permission matrix ---------------------------------------------------------

DENIED = {"anonymous": 401, "SimpleUsers": 403}


def expect(role: str, admin_code: int, *, scoped: int | None = None) -> int:
    """The status for ``role``: denied roles first, then SuperAdmins vs scoped admins."""
    if role in DENIED:
        return DENIED[role]
    if role == "SuperAdmins" or scoped is None:
        return admin_code
    return scoped


def _endpoint_cases():
    yield "list", "get", lambda w: URL, None, (200, None)
    yield "retrieve mine", "get", lambda w: f"{URL}{w.mine.pk}/", None, (200, None)
    yield "retrieve foreign", "get", lambda w: f"{URL}{w.foreign.pk}/", None, (200, 404)
    yield "retrieve orphan", "get", lambda w: f"{URL}{w.orphan.pk}/", None, (200, 404)
    yield (
        "create in my domain",
        "post",
        lambda w: URL,
        lambda w: {"hostname": "new.example.test", "domain": w.domain.pk},
        (201, None),
    )
    yield (
        "create in a foreign domain",
        "post",
        lambda w: URL,
        lambda w: {"hostname": "new.other.test", "domain": w.other_domain.pk},
        (201, 400),
    )
    yield (
        "create without domain",
        "post",
        lambda w: URL,
        lambda w: {"hostname": "new.example.org"},
        (201, 400),
    )
    yield (
        "disable mine",
        "patch",
        lambda w: f"{URL}{w.mine.pk}/",
        lambda w: {"enabled": False},
        (200, None),
    )
    yield (
        "disable foreign",
        "patch",
        lambda w: f"{URL}{w.foreign.pk}/",
        lambda w: {"enabled": False},
        (200, 404),
    )
    yield "delete mine", "delete", lambda w: f"{URL}{w.mine.pk}/", None, (204, None)
    yield "delete foreign", "delete", lambda w: f"{URL}{w.foreign.pk}/", None, (204, 404)
    yield "retry mine", "post", lambda w: f"{URL}{w.mine.pk}/retry/", None, (202, None)
    yield "retry foreign", "post", lambda w: f"{URL}{w.foreign.pk}/retry/", None, (202, 404)
    yield "renew mine", "post", lambda w: f"{URL}{w.mine.pk}/renew/", None, (202, None)
    yield "renew foreign", "post", lambda w: f"{URL}{w.foreign.pk}/renew/", None, (202, 404)
    # TLSA records (DANE): a web host has none, and no key to rotate.
    yield "tlsa mine", "get", lambda w: f"{URL}{w.mine.pk}/tlsa/", None, (200, None)
    yield "tlsa foreign", "get", lambda w: f"{URL}{w.foreign.pk}/tlsa/", None, (200, 404)
    yield "rotate-key mine", "post", lambda w: f"{URL}{w.mine.pk}/rotate-key/", None, (400, None)
    yield (
        "rotate-key foreign",
        "post",
        lambda w: f"{URL}{w.foreign.pk}/rotate-key/",
        None,
        (400, 404),
    )
    # The Virtual hosts page's and the Modoboa Pro slot's own endpoint.
    yield "summary", "get", lambda w: f"{URL}summary/", None, (200, None)
    # Not offered to anyone: a full replacement would bypass the PATCH rules.
    yield (
        "replace mine",
        "put",
        lambda w: f"{URL}{w.mine.pk}/",
        lambda w: {"hostname": "www.example.test", "enabled": False},
        (405, None),
    )


CASES = list(_endpoint_cases())


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,method,url,body,codes", CASES, ids=[case[0] for case in CASES])
def test_permission_matrix(world: World, call, role, name, method, url, body, codes):
    admin_code, scoped_code = codes
    expected = expect(role, admin_code, scoped=scoped_code)
    before = snapshot()
    response = call(world.api(role), method, url(world), body(world) if body else None)
    assert response.status_code == expected, response.content
    if expected >= 400:
        assert snapshot() == before, "a refused request wrote something"
        return
    if name == "list":
        names = {h["hostname"] for h in response.json()["results"]}
        if role == "SuperAdmins":
            assert names == {"www.example.test", "www.other.test", "orphan.test"}
        else:
            assert names == {"www.example.test"}
    elif name.startswith("create"):
        host = VirtualHost.objects.get(hostname=response.json()["hostname"])
        assert queued() == [("provision_virtualhost", (host.pk,))]
    elif name.startswith("disable"):
        assert VirtualHost.objects.get(pk=response.json()["id"]).enabled is False
        assert [f for f, _ in queued()] == ["disable_virtualhost"]
    elif name.startswith("delete"):
        assert [f for f, _ in queued()] == ["remove_virtualhost"]
    elif name.startswith("retry"):
        assert response.json()["status"] == constants.STATUS_PENDING
        assert [f for f, _ in queued()] == ["provision_virtualhost"]
    elif name.startswith("renew"):
        assert [f for f, _ in queued()] == ["renew_virtualhost"]


# -- the representation, listing, filters --------------------------------------------


def test_host_representation(world: World):
    import datetime

    from django.utils import timezone

    now = timezone.now()
    host = world.mine
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_ACTIVE,
        cert_serial="abc123",
        cert_issuer="Pebble Intermediate CA",
        cert_not_before=now - datetime.timedelta(days=10),
        cert_not_after=now + datetime.timedelta(days=80, hours=1),
        next_attempt_at=now + datetime.timedelta(days=50),
        last_success_at=now,
    )
    for step in (constants.STEP_HTTP_SITE, constants.STEP_ORDER):
        VirtualHostEvent.objects.create(
            virtualhost=host, step=step, outcome="ok", duration=0.25, message=f"{step} done"
        )
    data = world.api("DomainAdmins").get(f"{URL}{host.pk}/").json()
    assert data["id"] == host.pk
    assert data["hostname"] == "www.example.test"
    assert data["enabled"] is True
    assert (data["domain"], data["domain_name"]) == (world.domain.pk, "example.test")
    assert data["status"] == "active"
    assert data["last_error"] == ""
    assert data["certificate"]["serial"] == "abc123"
    assert data["certificate"]["issuer"] == "Pebble Intermediate CA"
    assert data["certificate"]["days_left"] == 80
    assert data["certificate"]["not_after"].startswith(
        (now + datetime.timedelta(days=80, hours=1)).strftime("%Y-%m-%dT%H")
    )
    assert data["next_action"] == "renewal"
    assert data["next_attempt_at"] is not None
    assert [(e["step"], e["outcome"]) for e in data["history"]] == [
        (constants.STEP_ORDER, "ok"),
        (constants.STEP_HTTP_SITE, "ok"),
    ]
    assert set(data["history"][0]) == {
        "step",
        "outcome",
        "started_at",
        "duration",
        "message",
        "run_id",
    }
    # A host without a certificate says so.
    pending = world.api("SuperAdmins").get(f"{URL}{world.orphan.pk}/").json()
    assert pending["certificate"] is None
    assert pending["next_action"] is None
    assert pending["history"] == []


def test_list_is_paginated_like_modoboa(world: World):
    for i in range(4):
        VirtualHost.objects.create(hostname=f"h{i}.example.test", domain=world.domain)
    api = world.api("SuperAdmins")
    page = api.get(URL, {"page_size": 3}).json()
    assert set(page) == {"count", "next", "previous", "results"}
    assert page["count"] == 7 and len(page["results"]) == 3 and page["previous"] is None
    second = api.get(URL, {"page_size": 3, "page": 2}).json()
    assert len(second["results"]) == 3
    first_names = {h["hostname"] for h in page["results"]}
    assert first_names.isdisjoint(h["hostname"] for h in second["results"])


def test_list_search_and_filters(world: World):
    VirtualHost.objects.filter(pk=world.foreign.pk).update(
        status=constants.STATUS_FAILED, last_error="DNS problem"
    )
    VirtualHost.objects.filter(pk=world.orphan.pk).update(enabled=False)
    api = world.api("SuperAdmins")

    def names(**params: str) -> set[str]:
        return {h["hostname"] for h in api.get(URL, params).json()["results"]}

    assert names(search="other") == {"www.other.test"}
    assert names(search="www") == {"www.example.test", "www.other.test"}
    assert names(status="failed") == {"www.other.test"}
    assert names(status="pending") == {"www.example.test", "orphan.test"}
    assert names(enabled="false") == {"orphan.test"}
    assert names(enabled="true", status="pending") == {"www.example.test"}
    assert api.get(URL, {"status": "bogus"}).status_code == 400
    # Scoped users search only within their hosts.
    assert {
        h["hostname"]
        for h in world.api("DomainAdmins").get(URL, {"search": "www"}).json()["results"]
    } == {"www.example.test"}


# -- invalid input: 400 with a field-level message, nothing written -------------------


@pytest.mark.parametrize(
    "body,field,fragment",
    [
        ({"hostname": "bad host.example.test"}, "hostname", "remove space"),
        ({"hostname": "*.example.test"}, "hostname", "Wildcard"),
        ({"hostname": "localhost"}, "hostname", "fully qualified"),
        ({"hostname": "192.0.2.1"}, "hostname", "IP address"),
        ({"hostname": "a..example.test"}, "hostname", "empty labels"),
        ({"hostname": "-x.example.test"}, "hostname", "hyphen"),
        ({"hostname": ""}, "hostname", ""),
        ({}, "hostname", "required"),
        ({"hostname": "WWW.Example.Test."}, "hostname", "www.example.test already exists"),
        ({"hostname": "ok.example.test", "enabled": "maybe"}, "enabled", "boolean"),
        ({"hostname": "ok.example.test", "domain": 999999}, "domain", "No domain you administer"),
        ({"hostname": "www.example.org", "domain": "DOMAIN"}, "hostname", "not in the domain"),
    ],
)
def test_create_rejects_invalid_input(world: World, call, body, field, fragment):
    if body.get("domain") == "DOMAIN":
        body = {**body, "domain": world.domain.pk}
    before = snapshot()
    response = call(world.api("SuperAdmins"), "post", URL, body)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert snapshot() == before


def test_create_without_account_email_says_what_to_configure(world: World, call):
    set_parameters(acme_account_email="")
    before = snapshot()
    response = call(world.api("SuperAdmins"), "post", URL, {"hostname": "new.example.test"})
    assert response.status_code == 400
    assert "ACME account email" in response.json()["non_field_errors"][0]
    assert snapshot() == before
    # Without Let's Encrypt, no email is needed (the host is served over HTTP only).
    set_parameters(enable_letsencrypt=False)
    response = call(world.api("SuperAdmins"), "post", URL, {"hostname": "new.example.test"})
    assert response.status_code == 201


def test_create_normalises_and_answers_the_host(world: World, call):
    response = call(
        world.api("DomainAdmins"),
        "post",
        URL,
        {"hostname": "Shop.Example.Test.", "domain": world.domain.pk, "enabled": True},
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["hostname"] == "shop.example.test"
    assert data["status"] == constants.STATUS_PENDING
    assert data["domain_name"] == "example.test"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"hostname": "renamed.example.test"}, "hostname"),
        ({"domain": None}, "domain"),
        ({}, "enabled"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_update_changes_only_enabled(world: World, call, body, field):
    before = snapshot()
    response = call(world.api("SuperAdmins"), "patch", f"{URL}{world.mine.pk}/", body)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert snapshot() == before


def test_put_is_not_allowed(world: World, call):
    before = snapshot()
    response = call(world.api("SuperAdmins"), "put", f"{URL}{world.mine.pk}/", {"enabled": False})
    assert response.status_code == 405
    assert snapshot() == before


def test_retry_and_renew_refuse_a_disabled_host(world: World, call):
    VirtualHost.objects.filter(pk=world.mine.pk).update(enabled=False)
    before = snapshot()
    for action in ("retry", "renew"):
        response = call(world.api("SuperAdmins"), "post", f"{URL}{world.mine.pk}/{action}/")
        assert response.status_code == 400
        assert "is disabled: enable it" in response.json()["detail"]
    assert snapshot() == before


def test_renew_needs_lets_encrypt(world: World, call):
    set_parameters(enable_letsencrypt=False)
    before = snapshot()
    response = call(world.api("SuperAdmins"), "post", f"{URL}{world.mine.pk}/renew/")
    assert response.status_code == 400
    assert "Let's Encrypt is disabled" in response.json()["detail"]
    assert snapshot() == before


def test_retry_without_account_email_says_what_to_configure(world: World, call):
    set_parameters(acme_account_email="")
    before = snapshot()
    response = call(world.api("DomainAdmins"), "post", f"{URL}{world.mine.pk}/retry/")
    assert response.status_code == 400
    assert "ACME account email" in response.json()["detail"]
    assert snapshot() == before


def test_retry_and_renew_answer_409_while_a_run_is_queued(world: World, call):
    api = world.api("SuperAdmins")
    assert call(api, "post", f"{URL}{world.mine.pk}/retry/").status_code == 202
    before = snapshot()
    for action in ("retry", "renew"):
        response = call(api, "post", f"{URL}{world.mine.pk}/{action}/")
        assert response.status_code == 409
        assert "already in progress" in response.json()["detail"]
    assert snapshot() == before
    assert queued() == [("provision_virtualhost", (world.mine.pk,))]


def test_retry_answers_409_while_a_worker_holds_the_host_lock(world: World, call, redis_server):
    import datetime

    lock = locks.HostLock(redis_server.client(), "www.example.test", datetime.timedelta(minutes=1))
    before = snapshot()
    with lock:
        response = call(world.api("DomainAdmins"), "post", f"{URL}{world.mine.pk}/renew/")
    assert response.status_code == 409
    assert "www.example.test" in response.json()["detail"]
    assert snapshot() == before


# -- real runs: provisioning, failure, alarm, retry, renew ------------------------------


@pytest.fixture
def live(chain: Chain) -> World:
    return make_world()


def alarms(api: APIClient) -> list[dict]:
    response = api.get("/api/v2/alarms/")
    assert response.status_code == 200, response.content
    body = response.json()
    return body["results"] if isinstance(body, dict) else body


def test_create_through_api_then_watch_it_become_active(live: World, chain: Chain):
    api = live.api("DomainAdmins")
    response = api.post(
        URL, {"hostname": "mail.example.test", "domain": live.domain.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    host_id = response.json()["id"]
    assert response.json()["status"] == constants.STATUS_PENDING

    chain.drain()
    data = api.get(f"{URL}{host_id}/").json()
    assert data["status"] == constants.STATUS_ACTIVE, data["last_error"]
    cert = data["certificate"]
    assert cert["serial"] and "Pebble" in cert["issuer"]
    assert cert["days_left"] > 30
    assert data["next_action"] == "renewal" and data["next_attempt_at"]
    steps = [(e["step"], e["outcome"]) for e in reversed(data["history"])]
    assert steps == FIRST_ISSUANCE_STEPS
    assert all(e["duration"] >= 0 and e["started_at"] for e in data["history"])


def test_failure_raises_an_alarm_and_retry_closes_it(live: World, chain: Chain):
    from modoboa.admin import constants as admin_constants

    chain.dns.nxdomain.add("bad.example.test")
    superadmin, domain_admin = live.api("SuperAdmins"), live.api("DomainAdmins")
    response = superadmin.post(
        URL, {"hostname": "bad.example.test", "domain": live.domain.pk}, format="json"
    )
    assert response.status_code == 201
    host_id = response.json()["id"]
    chain.drain()

    data = domain_admin.get(f"{URL}{host_id}/").json()
    assert data["status"] == constants.STATUS_FAILED
    assert data["failed_step"] == constants.STEP_ORDER
    assert "bad.example.test" in data["last_error"]
    assert data["history"][0]["outcome"] == "failed"
    assert data["attempts"] == 1

    # The alarm is on Modoboa's own Alarms API, for the SuperAdmin and the domain's admin.
    for api in (superadmin, domain_admin):
        opened = [a for a in alarms(api) if "bad.example.test" in a["title"]]
        assert len(opened) == 1
        assert opened[0]["status"] == admin_constants.ALARM_OPENED
        assert opened[0]["domain"]["name"] == "example.test"
    assert [a for a in alarms(live.api("Resellers")) if "bad.example.test" in a["title"]]

    # The operator fixes DNS, then clicks "Retry provisioning".
    chain.dns.nxdomain.discard("bad.example.test")
    response = domain_admin.post(f"{URL}{host_id}/retry/")
    assert response.status_code == 202
    assert response.json()["status"] == constants.STATUS_PENDING
    chain.drain()

    data = domain_admin.get(f"{URL}{host_id}/").json()
    assert data["status"] == constants.STATUS_ACTIVE, data["last_error"]
    assert data["last_error"] == "" and data["attempts"] == 0
    (alarm,) = [a for a in alarms(superadmin) if "bad.example.test" in a["title"]]
    assert alarm["status"] == admin_constants.ALARM_CLOSED
    assert alarm["closed"]


def test_renew_through_api_issues_a_new_certificate(live: World, chain: Chain):
    api = live.api("Resellers")
    host_id = api.post(
        URL, {"hostname": "renew.example.test", "domain": live.domain.pk}, format="json"
    ).json()["id"]
    chain.drain()
    first = api.get(f"{URL}{host_id}/").json()
    assert first["status"] == constants.STATUS_ACTIVE, first["last_error"]

    response = api.post(f"{URL}{host_id}/renew/")
    assert response.status_code == 202
    again = api.post(f"{URL}{host_id}/renew/")
    assert again.status_code == 409, "a renewal is already queued"
    chain.drain()

    renewed = api.get(f"{URL}{host_id}/").json()
    assert renewed["status"] == constants.STATUS_ACTIVE, renewed["last_error"]
    assert renewed["certificate"]["serial"] != first["certificate"]["serial"]
    assert chain.failed_jobs() == []


# -- what the Vue UI reads ---------------------------------------------------------------

PLUGINS_URL = "/api/v2/frontend/plugins/"


def _manifests(client: APIClient, **headers: str) -> dict[str, dict]:
    answer = client.get(PLUGINS_URL, **headers)
    assert answer.status_code == 200, answer.content
    return {m["name"]: m for m in answer.json()}


def test_the_manifest_declares_the_page_the_tab_and_the_pro_slot(world):
    from modoboa_pro import __version__

    manifests = _manifests(world.api("DomainAdmins"))
    page = manifests["modoboa_pro.virtualhosts"]
    assert page["remote"] == {
        "name": "modoboa_pro_virtualhosts",
        "url": f"/sitestatic/virtualhosts/remoteEntry.js?v={__version__}",
        "format": "esm",
    }
    roles = ["SuperAdmins", "Resellers", "DomainAdmins"]
    assert page["routes"] == [
        {
            "name": "VirtualHostList",
            "path": "virtualhosts",
            "component": "./VirtualHostList",
            "parent": "AdminLayout",
            "meta": {"requiresAuth": True, "allowedRoles": roles},
            "props": {},
            "children": [],
        }
    ]
    [entry] = page["menu_entries"]
    assert (entry["label"], entry["to"], entry["roles"]) == (
        "Virtual hosts",
        "VirtualHostList",
        roles,
    )
    assert [x["component"] for x in page["ui_extensions"]["domain.detail.tabs"]] == [
        "./DomainVirtualHosts"
    ]
    assert [x["component"] for x in page["ui_extensions"]["admin.information.pro"]] == [
        "./ProInformation"
    ]
    # The remote ships in the package: Django's finders serve what the URL names.
    from django.contrib.staticfiles import finders

    assert finders.find("virtualhosts/remoteEntry.js"), "build the frontend (make frontend)"


def test_the_pro_slot_status_follows_certificate_health(world):
    pro = _manifests(world.api("SuperAdmins"))["modoboa_pro"]
    assert pro["status"] == {"text": "3 hosts, 3 being provisioned", "color": "info"}
    VirtualHost.objects.update(status=constants.STATUS_ACTIVE)
    VirtualHost.objects.filter(pk=world.foreign.pk).update(
        status=constants.STATUS_FAILED, last_error="NXDOMAIN"
    )
    pro = _manifests(world.api("SuperAdmins"))["modoboa_pro"]
    assert pro["status"] == {"text": "1 host failing", "color": "warning"}


def test_labels_follow_the_users_language(world):
    manifests = _manifests(world.api("SuperAdmins"), HTTP_ACCEPT_LANGUAGE="fr")
    assert manifests["modoboa_pro.virtualhosts"]["menu_entries"][0]["label"] == "Hôtes virtuels"
    assert manifests["modoboa_pro"]["status"]["text"] == "3 hôtes, 3 en cours de provisionnement"


def test_summary_counts_only_the_callers_hosts(world):
    VirtualHost.objects.filter(pk=world.mine.pk).update(status=constants.STATUS_FAILED)
    mine = world.api("DomainAdmins").get(URL + "summary/").json()
    assert (mine["total"], mine["by_status"], mine["failing"]) == (1, {"failed": 1}, 1)
    assert mine["health"] == {"color": "warning", "text": "1 host failing"}
    assert mine["docs_url"].startswith("https://")
    everything = world.api("SuperAdmins").get(URL + "summary/").json()
    assert (everything["total"], everything["by_status"]) == (3, {"failed": 1, "pending": 2})
    assert world.api("SimpleUsers").get(URL + "summary/").status_code == 403


def test_a_host_shows_its_running_step_and_its_lifetime_share(world):
    import datetime

    from django.utils import timezone

    now = timezone.now()
    VirtualHost.objects.filter(pk=world.mine.pk).update(
        status=constants.STATUS_PROVISIONING,
        current_step=constants.STEP_ORDER,
        cert_not_before=now - datetime.timedelta(days=4, hours=12),
        cert_not_after=now + datetime.timedelta(days=1, hours=12),
    )
    host = world.api("DomainAdmins").get(f"{URL}{world.mine.pk}/").json()
    assert host["current_step"] == "order"
    assert host["certificate"]["days_left"] == 1
    assert host["certificate"]["lifetime_left"] == pytest.approx(0.25, abs=0.01)


# -- Redis down ---------------------------------------------------------------------


def test_redis_down_the_api_answers_503_and_saves_nothing(world, call, redis_down):
    admin = world.api("SuperAdmins")
    before = VirtualHost.objects.order_by("pk").values_list("hostname", "enabled")
    before = list(before)
    for method, url, data in (
        ("post", URL, {"hostname": "new.example.test"}),
        ("patch", f"{URL}{world.mine.pk}/", {"enabled": False}),
        ("delete", f"{URL}{world.mine.pk}/", None),
        ("post", f"{URL}{world.mine.pk}/retry/", None),
    ):
        answer = call(admin, method, url, data)
        assert answer.status_code == 503, (method, url, answer.content)
        assert "Cannot reach Redis" in answer.json()["detail"]
    assert list(VirtualHost.objects.order_by("pk").values_list("hostname", "enabled")) == before

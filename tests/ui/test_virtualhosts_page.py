"""The Virtual hosts page in Modoboa's real SPA, driven in Chromium like an admin would.

Each scenario goes through the whole product: the page calls the API, the workers run the
chain against Pebble and nginx, and the test checks what the page shows against what nginx
really serves.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from modoboa_pro.virtualhosts.adapters.locks import lock_key
from modoboa_pro.virtualhosts.adapters.tls import fetch_served_certificate

from ..deployment import PASSWORD, Stack
from .conftest import PHONE, PROVISION_TIMEOUT_MS, Session

pytestmark = pytest.mark.ui


def open_form(session: Session, hostname: str):
    """The "Add a virtual host" dialog, its hostname typed in."""
    session.page.get_by_role("button", name="Add a virtual host").click()
    dialog = session.page.get_by_test_id("vh-form")
    field = dialog.get_by_label("Hostname")
    # The field takes focus once the dialog has opened; typing before that lets the late
    # autofocus pull focus back, and an Enter would then submit the form.
    expect(field).to_be_focused()
    field.fill(hostname)
    return dialog


def add_host(session: Session, hostname: str, domain: str | None = None) -> None:
    page = session.page
    dialog = open_form(session, hostname)
    if domain:
        # By keyboard, as the controls must allow: focus the select, open it, pick.
        select = dialog.get_by_label("Domain")
        select.focus()
        expect(select).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("listbox")).to_be_visible()
        page.get_by_role("option", name=domain).click()
    dialog.get_by_role("button", name="Create").click()


def wait_status(session: Session, hostname: str, text: str) -> None:
    status = session.row(hostname).get_by_test_id("vh-status")
    expect(status).to_have_text(re.compile(text), timeout=PROVISION_TIMEOUT_MS)


def open_details(session: Session, hostname: str):
    session.row(hostname).get_by_role("button", name=hostname).click()
    details = session.page.get_by_test_id("vh-details")
    expect(details).to_be_visible()
    return details


def close_details(session: Session) -> None:
    details = session.page.get_by_test_id("vh-details")
    details.get_by_role("button", name="Close").click()
    expect(details).to_be_hidden()


UNLABELLED = """(root) => [...root.querySelectorAll('button, input, select, textarea, a[href]')]
    .filter((el) => el.offsetParent !== null && el.type !== 'hidden')
    .filter((el) => {
        const named = (el.getAttribute('aria-label') || el.getAttribute('title') || '').trim()
        const labelled = el.getAttribute('aria-labelledby')
            || (el.id && document.querySelector(`label[for="${el.id}"]`))
        return !named && !labelled && !(el.textContent || '').trim()
    })
    .map((el) => el.outerHTML.slice(0, 160))"""


def unlabelled_controls(area) -> list[str]:
    """Visible controls in ``area`` that a screen reader could not name."""
    return area.evaluate(UNLABELLED)


def served_serial(stack: Stack, hostname: str) -> str:
    return fetch_served_certificate("127.0.0.1", stack.nginx.https_port, hostname).serial


def pro_item(session: Session):
    return session.page.locator(".v-navigation-drawer").get_by_role(
        "link", name=re.compile("Modoboa Pro")
    )


def test_an_admin_adds_a_host_and_watches_it_become_active(stack, login):
    session = login()
    session.open_virtual_hosts()
    add_host(session, "shop.alpha.test", domain="alpha.test")
    # No reload: the page follows the run until nginx serves the certificate.
    wait_status(session, "shop.alpha.test", r"^Active$")
    row = session.row("shop.alpha.test")
    expect(row).to_contain_text("Pebble Intermediate CA")
    expect(row).to_contain_text(re.compile(r"\d+ days left"))
    details = open_details(session, "shop.alpha.test")
    serial = details.get_by_test_id("vh-cert-serial").inner_text().strip()
    assert serial == served_serial(stack, "shop.alpha.test")
    # The step history of the run, newest first, with the verification at the top.
    expect(details).to_contain_text("Served certificate verified")
    expect(details).to_contain_text("Certificate order")
    assert unlabelled_controls(details) == []
    session.screenshot("details-desktop")
    close_details(session)
    assert unlabelled_controls(session.page.locator("main")) == []
    session.screenshot("list-desktop")


def test_the_page_is_usable_at_a_phones_width(stack, login):
    stack.api.create_virtualhost("phone.alpha.test")
    session = login(viewport=PHONE)
    session.open_virtual_hosts()
    # Modoboa's menu is permanent: on a phone one folds it to its icons (its chevron button).
    session.page.locator(".v-navigation-drawer button:has(.mdi-chevron-left)").click()
    expect(session.page.get_by_role("button", name="Add a virtual host")).to_be_visible()
    wait_status(session, "phone.alpha.test", r"^Active$")
    # Nothing moves any more: the page stops asking (it polls every 2 s while a host does).
    session.page.wait_for_timeout(2500)  # a poll already under way may still land
    polls: list[str] = []
    session.page.on(
        "request", lambda r: polls.append(r.url) if "/api/v2/virtualhosts/" in r.url else None
    )
    session.page.wait_for_timeout(5000)
    assert polls == []
    box = session.page.get_by_test_id("vh-table").bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], box
    session.screenshot("list-phone")
    details = open_details(session, "phone.alpha.test")
    expect(details.get_by_role("button", name="Renew now")).to_be_in_viewport()
    session.screenshot("details-phone")


def test_an_invalid_hostname_is_refused_on_the_field_and_nothing_is_created(stack, login):
    session = login()
    session.open_virtual_hosts()
    # With the keyboard only: the button opens the form, the name field has the focus,
    # Enter submits.
    page = session.page
    page.get_by_role("button", name="Add a virtual host").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_test_id("vh-form")
    expect(dialog.get_by_label("Hostname")).to_be_focused()
    page.keyboard.type("bad host.alpha.test")
    page.keyboard.press("Enter")
    expect(dialog).to_contain_text("may contain only letters, digits, hyphens and dots")
    expect(dialog.get_by_label("Hostname")).to_have_value("bad host.alpha.test")  # kept to fix
    assert [h["hostname"] for h in stack.api.virtualhosts() if " " in h["hostname"]] == []
    session.screenshot("invalid-hostname")


def test_a_failing_host_says_why_and_retry_provisioning_fixes_it(stack, login):
    stack.dns.nxdomain.add("nx.alpha.test")  # the CA cannot resolve the name
    session = login()
    session.open_virtual_hosts()
    add_host(session, "nx.alpha.test", domain="alpha.test")
    wait_status(session, "nx.alpha.test", r"^Failed")
    error = session.row("nx.alpha.test").get_by_test_id("vh-last-error")
    expect(error).to_contain_text("nx.alpha.test")
    expect(error).to_contain_text(re.compile("DNS|NXDOMAIN|resolve", re.I))
    # The Modoboa Pro item turns to warning with the failure count (the page refreshes it).
    expect(pro_item(session)).to_contain_text("1 host failing", timeout=10_000)
    session.screenshot("failed-host")

    stack.dns.nxdomain.discard("nx.alpha.test")  # the operator fixes the DNS record
    details = open_details(session, "nx.alpha.test")
    details.get_by_role("button", name="Retry provisioning").click()
    expect(details.get_by_test_id("vh-action-result")).to_contain_text("nx.alpha.test")
    close_details(session)
    wait_status(session, "nx.alpha.test", r"^Active$")
    assert stack.host("nx.alpha.test")["certificate"]["serial"] == served_serial(
        stack, "nx.alpha.test"
    )
    expect(pro_item(session)).not_to_contain_text("failing", timeout=10_000)


def test_renew_now_shows_the_new_certificate(stack, login):
    stack.api.create_virtualhost("renew.alpha.test")
    session = login()
    session.open_virtual_hosts()
    wait_status(session, "renew.alpha.test", r"^Active$")
    details = open_details(session, "renew.alpha.test")
    serial = details.get_by_test_id("vh-cert-serial")
    before = serial.inner_text().strip()
    details.get_by_role("button", name="Renew now").click()
    expect(details.get_by_test_id("vh-action-result")).to_contain_text("renew.alpha.test")
    # The dialog follows the renewal to the new certificate, and nginx serves that one.
    expect(serial).not_to_have_text(before, timeout=PROVISION_TIMEOUT_MS)
    after = serial.inner_text().strip()
    assert after == served_serial(stack, "renew.alpha.test") != before
    # A second click while nothing runs is accepted again; no 409 left behind.
    session.screenshot("renewed")


def test_an_action_refused_by_the_api_shows_its_message(stack, login):
    stack.api.create_virtualhost("busy.alpha.test")
    session = login()
    session.open_virtual_hosts()
    wait_status(session, "busy.alpha.test", r"^Active$")
    # A worker holds the host (as during a renewal run): the API answers 409.
    redis = stack.demo.redis.client()
    key = lock_key("busy.alpha.test")
    redis.set(key, "held-by-the-test", px=60_000)
    try:
        details = open_details(session, "busy.alpha.test")
        details.get_by_role("button", name="Renew now").click()
        result = details.get_by_test_id("vh-action-result")
        expect(result).to_contain_text(
            "A run for busy.alpha.test is already in progress. Wait for it to finish"
        )
    finally:
        redis.delete(key)


def test_disable_then_delete(stack, login):
    stack.api.create_virtualhost("gone.alpha.test")
    site = stack.nginx.sites_dir
    session = login()
    session.open_virtual_hosts()
    wait_status(session, "gone.alpha.test", r"^Active$")
    assert any("gone.alpha.test" in p.name for p in site.iterdir())

    details = open_details(session, "gone.alpha.test")
    details.get_by_role("button", name="Disable").click()
    expect(details.get_by_test_id("vh-action-result")).to_contain_text("disabled")
    close_details(session)
    wait_status(session, "gone.alpha.test", r"^Disabled$")
    assert not any("gone.alpha.test" in p.name for p in site.iterdir())

    details = open_details(session, "gone.alpha.test")
    details.get_by_role("button", name="Delete").click()
    confirm = session.page.get_by_test_id("vh-delete-confirm")
    expect(confirm).to_contain_text("cannot be undone")
    expect(confirm).to_contain_text("archive")
    confirm.get_by_role("button", name="Delete").click()
    expect(session.row("gone.alpha.test")).to_have_count(0)
    assert stack.host("gone.alpha.test") is None


def test_a_domain_admin_sees_only_their_domains_hosts(stack, login):
    mine = stack.api.create_virtualhost("www.alpha.test")
    stack.api._call("PATCH", f"virtualhosts/{mine['id']}/", json={"enabled": True})
    theirs = stack.api._call(
        "POST",
        "virtualhosts/",
        json={"hostname": "www.beta.test", "domain": stack.domains["beta.test"]},
    ).json()
    stack.shell(
        "from modoboa_pro.virtualhosts.models import VirtualHost; "
        f"VirtualHost.objects.filter(hostname='www.alpha.test').update(domain_id={stack.domains['alpha.test']})"
    )
    session = login("boss@alpha.test", PASSWORD)
    session.open_virtual_hosts()
    expect(session.row("www.alpha.test")).to_have_count(1)
    expect(session.row("www.beta.test")).to_have_count(0)
    # Not even through the API with the page's own credentials.
    status = session.page.evaluate(
        """async (id) => {
            const key = Object.keys(sessionStorage).find((k) => k.startsWith('oidc.user:'))
            const token = JSON.parse(sessionStorage.getItem(key)).access_token
            const answer = await fetch(`/api/v2/virtualhosts/${id}/`,
                                       {headers: {Authorization: `Bearer ${token}`}})
            return answer.status
        }""",
        theirs["id"],
    )
    assert status == 404
    # The Modoboa Pro item is for SuperAdmins only.
    expect(pro_item(session)).to_have_count(0)


def test_the_domain_page_has_a_virtual_hosts_tab(stack, login):
    stack.api._call(
        "POST",
        "virtualhosts/",
        json={"hostname": "tab.alpha.test", "domain": stack.domains["alpha.test"]},
    )
    session = login()
    session.click_menu("Domains")
    session.page.get_by_role("link", name="alpha.test", exact=True).click()
    session.page.get_by_role("tab", name="Virtual hosts").click()
    expect(session.row("tab.alpha.test")).to_have_count(1)
    expect(session.page.locator('tr[data-hostname="www.beta.test"]')).to_have_count(0)
    session.screenshot("domain-tab")


def test_the_modoboa_pro_item_shows_the_health_summary(stack, login):
    session = login()
    item = pro_item(session)
    expect(item).to_contain_text(re.compile(r"\d+ hosts?"))
    item.click()
    health = session.page.get_by_test_id("vh-health")
    expect(health).to_contain_text(re.compile(r"\d+ hosts?|failing|provisioned"))
    session.screenshot("pro-information")
    session.page.get_by_role("button", name="Open Virtual hosts").click()
    session.page.wait_for_url("**/admin/virtualhosts")


def test_the_page_speaks_french(stack, login):
    session = login("chef@alpha.test", PASSWORD)
    session.open_virtual_hosts("Hôtes virtuels")
    expect(session.page.get_by_role("button", name="Ajouter un hôte virtuel")).to_be_visible()
    session.screenshot("list-french")


def test_search_and_status_filter_narrow_the_list(stack, login):
    stack.dns.nxdomain.add("lost.beta.test")
    stack.api.create_virtualhost("find-me.beta.test")
    stack.api.create_virtualhost("lost.beta.test")
    session = login()
    session.open_virtual_hosts()
    wait_status(session, "find-me.beta.test", r"^Active$")
    wait_status(session, "lost.beta.test", r"^Failed")
    page = session.page
    # Failed hosts come first.
    assert page.locator("tr[data-hostname]").first.get_attribute("data-hostname") == (
        "lost.beta.test"
    )
    page.get_by_label("Search").fill("find-me")
    expect(page.locator("tr[data-hostname]")).to_have_count(1)
    expect(session.row("find-me.beta.test")).to_have_count(1)
    page.get_by_label("Search").fill("")
    page.get_by_label("Status").focus()
    page.keyboard.press("Enter")
    page.get_by_role("option", name="Failed").click()
    expect(session.row("lost.beta.test")).to_have_count(1)
    expect(session.row("find-me.beta.test")).to_have_count(0)
    stack.dns.nxdomain.discard("lost.beta.test")


def test_an_acme_profile_is_chosen_in_the_form_and_checked_against_the_ca(stack, login):
    """A malformed profile is refused on its field; a well-formed one the CA does not offer
    (Debian's Pebble offers none) fails the order, and the page says which the CA offers;
    the details change it (or refuse a malformed one, saying why)."""
    session = login()
    session.open_virtual_hosts()
    dialog = open_form(session, "profiled.alpha.test")
    profile = dialog.get_by_label("ACME profile (optional)")
    profile.fill("short lived")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog).to_contain_text("is not an ACME profile name")
    assert stack.host("profiled.alpha.test") is None
    profile.fill("tlsserver")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog).to_be_hidden()

    wait_status(session, "profiled.alpha.test", r"^Failed")
    error = session.row("profiled.alpha.test").get_by_test_id("vh-last-error")
    expect(error).to_contain_text("The ACME profile 'tlsserver' is not offered by the CA")
    expect(error).to_contain_text("none: it does not support profiles")
    details = open_details(session, "profiled.alpha.test")
    field = details.get_by_role("textbox", name="ACME profile")
    expect(field).to_have_value("tlsserver")
    assert stack.host("profiled.alpha.test")["acme_profile"] == "tlsserver"
    assert unlabelled_controls(details) == []
    session.screenshot("acme-profile")

    # Changed in the details: saved for the next order, nothing ordered now.
    field.fill("bad one")
    details.get_by_role("button", name="Save profile").click()
    expect(details.get_by_test_id("vh-action-result")).to_contain_text(
        "is not an ACME profile name"
    )
    assert stack.host("profiled.alpha.test")["acme_profile"] == "tlsserver"
    field.fill("")
    details.get_by_role("button", name="Save profile").click()
    expect(details.get_by_test_id("vh-action-result")).to_contain_text(
        "ACME profile of profiled.alpha.test saved"
    )
    assert stack.host("profiled.alpha.test")["acme_profile"] == ""
    close_details(session)


@pytest.mark.names
def test_the_domain_tab_adds_the_usual_mail_names(stack, login):
    session = login()
    session.click_menu("Domains")
    session.page.get_by_role("link", name="beta.test", exact=True).click()
    session.page.get_by_role("tab", name="Virtual hosts").click()
    session.page.get_by_test_id("vh-add-domain-names").click()
    result = session.page.get_by_test_id("vh-domain-names-result")
    for name in ("mail.beta.test", "autoconfig.beta.test", "autodiscover.beta.test"):
        expect(result.locator('[data-outcome="created"]', has_text=name)).to_have_count(1)
        expect(session.row(name)).to_have_count(1)
    session.screenshot("domain-names")
    # A second click creates nothing and says so.
    session.page.get_by_test_id("vh-add-domain-names").click()
    expect(result.locator('[data-outcome="exists"]')).to_have_count(3)
    # Leave beta.test as the other scenarios know it.
    for name in ("mail.beta.test", "autoconfig.beta.test", "autodiscover.beta.test"):
        host = stack.host(name)
        assert host is not None and host["site"] in ("web", "autoconfig", "autodiscover")
        stack.api._call("DELETE", f"virtualhosts/{host['id']}/")


@pytest.mark.mail
def test_a_host_marked_for_mail_in_the_form_says_so_in_its_details(stack, login):
    """The form's "Serves mail" box reaches the API; the details say so and show the mail
    host's own step (its key, kept for DANE) by its label. This instance has no Postfix or
    Dovecot of its own (the mail deploy is off: tests/mail runs them)."""
    session = login()
    session.open_virtual_hosts()
    dialog = open_form(session, "smtp.alpha.test")
    dialog.get_by_label("Serves mail (Postfix and Dovecot)").check()
    assert unlabelled_controls(dialog) == []
    dialog.get_by_role("button", name="Create").click()
    expect(dialog).to_be_hidden()
    wait_status(session, "smtp.alpha.test", r"^Active$")
    host = stack.host("smtp.alpha.test")
    assert host is not None and host["serves_mail"] is True
    details = open_details(session, "smtp.alpha.test")
    expect(details).to_contain_text("Yes (Postfix and Dovecot)")
    expect(details).to_contain_text("Private key chosen")
    session.screenshot("mail-host-details")
    close_details(session)
    # Leave the list as the other scenarios know it.
    stack.api._call("DELETE", f"virtualhosts/{host['id']}/")

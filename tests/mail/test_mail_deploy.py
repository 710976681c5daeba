"""Mail hosts' certificates in real Postfix and Dovecot, by SNI, through the privileged worker.

What an operator would check: the certificate each mail port presents for the name
(STARTTLS on smtp/submission/imap/pop3, implicit TLS on submissions/imaps/pop3s),
verified against Pebble's root; the plugin's two files; how many times each service
reloaded; the host's steps and error.
"""

from __future__ import annotations

import datetime

import django_rq
import pytest

from modoboa_pro.virtualhosts import alarms, constants, queueing, services
from modoboa_pro.virtualhosts.adapters import counters, dovecot, mailprobe, postfix, tls
from modoboa_pro.virtualhosts.models import VirtualHost

from .conftest import Mail

pytestmark = pytest.mark.mail

FIRST = "mail.example.test"
SECOND = "imap.example.org"
MAIL_STEPS = [(constants.STEP_MAIL_DEPLOY, "ok"), (constants.STEP_MAIL_VERIFY, "ok")]


def presented(m: Mail, hostname: str, *, verify: bool = False) -> dict[str, str]:
    """The serial each mail port presents for SNI ``hostname`` (``verify``: the chain and
    the name verified against Pebble's root, as a mail client would)."""
    roots = m.chain.pebble.issuing_roots_pem().decode() if verify else None
    return {
        service: mailprobe.fetch("127.0.0.1", port, service, hostname, cadata=roots).serial
        for service, port in m.ports.items()
    }


def add_mail_host(m: Mail, hostname: str) -> VirtualHost:
    host = services.create_virtualhost(hostname, serves_mail=True)
    m.chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    return host


def last_steps(host: VirtualHost, count: int = 2) -> list[tuple[str, str]]:
    """The last ``count`` mail steps (a mail host's DANE steps ``key``/``tlsa`` left out)."""
    events = host.events.exclude(step__in=(constants.STEP_KEY, constants.STEP_TLSA))
    return [(e.step, e.outcome) for e in reversed(events.order_by("-id")[:count])]


def test_mail_hosts_get_their_own_certificates_and_a_renewal_swaps_them(mail: Mail):
    before = mail.reloads()
    first = add_mail_host(mail, FIRST)
    assert last_steps(first) == MAIL_STEPS
    # Every port presents the new certificate for the name, trusted by a client of Pebble.
    assert presented(mail, FIRST, verify=True) == dict.fromkeys(mail.ports, first.cert_serial)
    assert mail.reloads() == (before[0] + 1, before[1] + 1)
    assert f"{FIRST} " in mail.map_text() and f"local_name {FIRST} {{" in mail.include_text()

    second = add_mail_host(mail, SECOND)
    assert presented(mail, SECOND, verify=True) == dict.fromkeys(mail.ports, second.cert_serial)
    assert presented(mail, FIRST) == dict.fromkeys(mail.ports, first.cert_serial)

    # Both renewed in one burst: one deploy (one reload of each service) serves both.
    reloads = mail.reloads()
    counted = reload_counts()
    old = {FIRST: first.cert_serial, SECOND: second.cert_serial}
    for host in (first, second):
        services.renew_now(host)
    mail.chain.drain()
    for host in (first, second):
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert host.cert_serial != old[host.hostname]
        assert presented(mail, host.hostname, verify=True) == dict.fromkeys(
            mail.ports, host.cert_serial
        )
    assert mail.reloads() == (reloads[0] + 1, reloads[1] + 1)
    # The metrics count the same reloads as the services' own logs.
    assert reload_counts() == (counted[0] + 1, counted[1] + 1)


def reload_counts() -> tuple[int, int]:
    """modoboa_reloads_total{service="postfix"|"dovecot", outcome="ok"}, as the metrics read it."""
    snapshot = counters.read(django_rq.get_connection(constants.QUEUE_PRIVILEGED))
    return (
        snapshot.reloads.get(("postfix", "ok"), 0),
        snapshot.reloads.get(("dovecot", "ok"), 0),
    )


def test_disabled_unmarked_and_deleted_mail_hosts_leave_both_files(mail: Mail):
    first = add_mail_host(mail, FIRST)
    second = add_mail_host(mail, SECOND)

    services.set_enabled(first, False)
    mail.chain.drain()
    first.refresh_from_db()
    assert first.status == constants.STATUS_DISABLED, first.last_error
    assert not postfix.listed(mail.postfix.sni_map, FIRST)
    assert not dovecot.listed(mail.dovecot.include, FIRST)
    assert postfix.listed(mail.postfix.sni_map, SECOND)
    # The services no longer present its certificate; the other host keeps its own.
    assert first.cert_serial not in presented(mail, FIRST).values()
    assert presented(mail, SECOND) == dict.fromkeys(mail.ports, second.cert_serial)

    # No longer marked for mail: its next run takes it out; marked again: back in.
    services.set_serves_mail(second, False)
    mail.chain.drain()
    assert not postfix.listed(mail.postfix.sni_map, SECOND)
    assert not dovecot.listed(mail.dovecot.include, SECOND)
    assert second.cert_serial not in presented(mail, SECOND).values()
    services.set_serves_mail(second, True)
    mail.chain.drain()
    assert presented(mail, SECOND) == dict.fromkeys(mail.ports, second.cert_serial)

    services.delete_virtualhost(second)
    mail.chain.drain()
    assert not postfix.listed(mail.postfix.sni_map, SECOND)
    assert not dovecot.listed(mail.dovecot.include, SECOND)
    assert second.cert_serial not in presented(mail, SECOND).values()


def test_a_refused_configuration_never_replaces_the_working_one(mail: Mail, settings, monkeypatch):
    settings.VIRTUALHOSTS_RELOAD_MODE = "local"  # the deploy runs here, where the seam is
    first = add_mail_host(mail, FIRST)
    old_serial = first.cert_serial
    working_map, working_include = mail.map_text(), mail.include_text()
    working_db = (mail.postfix.sni_map.parent / (mail.postfix.sni_map.name + ".db")).read_bytes()

    # The map names a file that is not there: the real postmap -F refuses it.
    monkeypatch.setattr(
        postfix, "render_map", lambda entries: f"{FIRST} /nonexistent/key /nonexistent/chain\n"
    )
    renewed = renew_and_fail(mail, first, constants.STEP_MAIL_DEPLOY)
    assert "postmap -F refused the SNI map" in renewed.last_error
    assert mail.map_text() == working_map
    assert (mail.postfix.sni_map.parent / (mail.postfix.sni_map.name + ".db")).read_bytes() == (
        working_db
    )
    assert presented(mail, FIRST) == dict.fromkeys(mail.ports, old_serial)  # still the old one
    monkeypatch.undo()

    # An include Dovecot cannot parse: the real doveconf -n refuses it, the old one is put back.
    monkeypatch.setattr(dovecot, "render", lambda entries, version: "local_name broken {\n")
    renewed = renew_and_fail(mail, renewed, constants.STEP_MAIL_DEPLOY)
    assert "doveconf -n refused" in renewed.last_error
    assert "The previous file was put back" in renewed.last_error
    assert mail.include_text() == working_include
    dovecot_ports = [s for s in mail.ports if mailprobe.SERVICES[s][1] == mailprobe.DOVECOT]
    served = presented(mail, FIRST)
    assert all(served[s] == old_serial for s in dovecot_ports)
    monkeypatch.undo()

    # Fixed: the retry deploys the current certificate everywhere.
    services.retry_provisioning(renewed)
    mail.chain.drain()
    renewed.refresh_from_db()
    assert renewed.status == constants.STATUS_ACTIVE, renewed.last_error
    assert presented(mail, FIRST) == dict.fromkeys(mail.ports, renewed.cert_serial)


def renew_and_fail(m: Mail, host: VirtualHost, step: str) -> VirtualHost:
    services.renew_now(host)
    m.chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == step, host.last_error
    assert host.last_error.startswith(
        f"The web site of {host.hostname} serves its certificate (serial {host.cert_serial})"
    )
    # The web site does serve it.
    assert (
        tls.fetch_served_certificate("127.0.0.1", m.chain.nginx.https_port, host.hostname).serial
        == host.cert_serial
    )
    return host


def test_dovecot_still_serving_the_old_certificate_is_named(mail: Mail, settings, monkeypatch):
    settings.VIRTUALHOSTS_RELOAD_MODE = "local"
    monkeypatch.setattr(mailprobe, "VERIFY_TIMEOUT", 1.5)
    first = add_mail_host(mail, FIRST)
    # Dovecot's reload command does nothing (e.g. it names another instance).
    settings.VIRTUALHOSTS_MAIL_DOVEADM_COMMAND = ["true"]
    services.renew_now(first)
    mail.chain.drain()
    first.refresh_from_db()
    assert first.status == constants.STATUS_FAILED
    assert first.failed_step == constants.STEP_MAIL_VERIFY
    assert first.last_error.startswith(f"The web site of {FIRST} serves its certificate")
    assert "Dovecot still not presenting the new certificate" in first.last_error
    assert "Postfix" not in first.last_error.split("after the mail deploy")[0]
    served = presented(mail, FIRST)
    assert served["smtp"] == first.cert_serial != served["imap"]
    # The host's alarm says the same.
    from modoboa.admin.models import Alarm

    alarm = Alarm.objects.get(internal_name=f"{alarms.HOST_ALARM_PREFIX}{first.pk}")
    assert f"Virtual host {FIRST}: mail_verify failed" in alarm.title
    assert "Dovecot still not presenting the new certificate" in alarm.title

    # The retry sweep's run fails the same way: the streak goes on (back-off, then pause),
    # the web site's new certificate stays recorded.
    assert first.attempts == 1
    since, retry_at = first.failing_since, first.next_attempt_at
    queueing.enqueue_once(queueing.PROVISION, first.pk, first.pk)
    mail.chain.drain()
    first.refresh_from_db()
    assert first.status == constants.STATUS_FAILED
    assert first.failed_step == constants.STEP_MAIL_VERIFY
    assert (first.attempts, first.failing_since) == (2, since)
    assert first.next_attempt_at - retry_at > datetime.timedelta(minutes=5)
    assert first.cert_serial == served["smtp"]

"""The provisioning chain end to end through real nginx, Pebble and Redis."""

from __future__ import annotations

import datetime
import logging
import ssl

import pytest
import requests
from cryptography import x509

from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.adapters import probe, tls
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, FIRST_ISSUANCE_STEPS, Chain, set_parameters

pytestmark = pytest.mark.chain


def served_certificate(chain: Chain, hostname: str) -> x509.Certificate:
    """The leaf certificate nginx presents for this SNI on the HTTPS port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket

    with socket.create_connection(("127.0.0.1", chain.nginx.https_port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=hostname) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def assert_issued_by_pebble(chain: Chain, cert: x509.Certificate) -> None:
    """The served leaf chains to Pebble's (per-run) issuing intermediate."""
    intermediates = x509.load_pem_x509_certificates(chain.pebble.issuing_intermediates_pem())
    assert cert.issuer in {i.subject for i in intermediates}


def test_create_through_orm_reaches_active_https(chain: Chain, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    host = VirtualHost.objects.create(hostname="WWW.Example.TEST")
    assert host.hostname == "www.example.test"

    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.last_error == ""

    # The CA fetched the token from nginx.
    validations = [
        e
        for e in chain.nginx.access_log_entries()
        if e.user_agent.startswith("LetsEncrypt-Pebble-VA") and e.host == "www.example.test"
    ]
    assert validations and all(e.status == 200 for e in validations)
    assert all(e.uri.startswith("/.well-known/acme-challenge/") for e in validations)

    # The files, exactly where the documentation says, with the right modes.
    cert_dir = chain.storage / "certs" / "www.example.test"
    fullchain, privkey = cert_dir / "fullchain.pem", cert_dir / "privkey.pem"
    assert privkey.stat().st_mode & 0o777 == 0o600
    assert fullchain.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (chain.storage / "webroot").is_dir()
    left = [p for p in (chain.storage / "webroot").rglob("*") if p.is_file()]
    assert left == [], "challenge tokens left behind"

    # nginx serves that certificate for this SNI, issued by Pebble.
    served = served_certificate(chain, "www.example.test")
    on_disk = x509.load_pem_x509_certificates(fullchain.read_bytes())[0]
    assert served.serial_number == on_disk.serial_number
    assert format(served.serial_number, "x") == host.cert_serial
    assert_issued_by_pebble(chain, served)
    assert host.cert_not_after is not None and host.cert_not_after == on_disk.not_valid_after_utc

    # HTTPS, verified like a browser would (SNI, chain to Pebble's root), reaches the app.
    response = chain.https("www.example.test", "/")
    status, body = response.status, response.data
    assert (status, body) == (200, BACKEND_BODY), body[:300]
    # HTTP redirects to HTTPS.
    response = requests.get(
        f"http://127.0.0.1:{chain.nginx.http_port}/mail",
        headers={"Host": "www.example.test"},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://www.example.test:{chain.nginx.https_port}/mail"

    # Every step is in the host's history and on the modoboa.jobs logger.
    steps = [(e.step, e.outcome) for e in host.events.order_by("started_at", "id")]
    assert steps == FIRST_ISSUANCE_STEPS
    messages = [r.getMessage() for r in caplog.records if r.name == "modoboa.jobs"]
    assert any("www.example.test: certificate issued" in m for m in messages)
    assert chain.failed_jobs() == []


def test_create_through_service_layer(chain: Chain):
    host = services.create_virtualhost("mail.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, "mail.example.test")
    assert served.serial == host.cert_serial
    assert "mail.example.test" in served.names


def test_an_idn_and_the_longest_accepted_name_reach_active_https(chain: Chain):
    """IDNA 2008 names and 232-character ones go through nginx, Pebble and the file system."""
    from modoboa_pro.virtualhosts.hostnames import max_hostname_length

    labels = ["l" * 63, "m" * 63, "n" * 63]
    filler = max_hostname_length() - len(".".join(labels)) - len(".example.test") - 1
    longest = ".".join([*labels, "o" * filler]) + ".example.test"
    assert len(longest) == max_hostname_length() == 232
    names = {"straße.example.test": "xn--strae-oqa.example.test", longest: longest}
    hosts = [services.create_virtualhost(typed) for typed in names]
    chain.drain()
    for host, stored in zip(hosts, names.values(), strict=True):
        host.refresh_from_db()
        assert host.hostname == stored
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, stored)
        assert served.serial == host.cert_serial and stored in served.names
    for host in hosts:
        services.delete_virtualhost(host)
    chain.drain()
    archives = sorted(p.name for p in (chain.storage / constants.ARCHIVE_DIRNAME).iterdir())
    assert [name.rsplit("-", 1)[0] for name in archives] == sorted(names.values())
    assert chain.failed_jobs() == []


def test_letsencrypt_disabled_serves_http_only_then_provisions_when_enabled(chain: Chain):
    set_parameters(enable_letsencrypt=False)
    host = VirtualHost.objects.create(hostname="plain.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_HTTP_ONLY
    assert not (chain.storage / "certs" / "plain.example.test").exists()
    response = requests.get(
        f"http://127.0.0.1:{chain.nginx.http_port}/",
        headers={"Host": "plain.example.test"},
        timeout=5,
    )
    assert response.content == BACKEND_BODY

    set_parameters(enable_letsencrypt=True)
    assert services.provision_missing() == 1
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error


def test_reloads_that_wait_for_nginx_need_one_answer_per_check(
    chain: Chain, monkeypatch, settings
):
    """With nginx's pid file (the chain's, as Debian's /run/nginx.pid), a reload returns once
    nginx's old workers stopped accepting: the challenge check and the served-certificate
    check each need one answer, not a streak. Without it, they ask for a streak."""
    handshakes: list[str] = []
    fetch = tls.fetch_served_certificate

    def counted(address: str, port: int, server_name: str, *args, **kwargs):
        handshakes.append(server_name)
        return fetch(address, port, server_name, *args, **kwargs)

    monkeypatch.setattr(tls, "fetch_served_certificate", counted)

    def probes(hostname: str) -> int:
        return sum(
            1
            for e in chain.nginx.access_log_entries()
            if e.host == hostname and "modoboa-pro-probe-" in e.uri
        )

    host = VirtualHost.objects.create(hostname="waited.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert handshakes.count("waited.example.test") == 1
    assert probes("waited.example.test") == 1

    settings.VIRTUALHOSTS_NGINX_PID_FILE = None  # unknown: the probes ask for a streak
    other = VirtualHost.objects.create(hostname="streak.example.test")
    chain.drain()
    other.refresh_from_db()
    assert other.status == constants.STATUS_ACTIVE, other.last_error
    assert handshakes.count("streak.example.test") >= probe.STABLE_SUCCESSES
    assert probes("streak.example.test") >= probe.STABLE_SUCCESSES


def test_a_run_that_reloads_nothing_judges_nginx_once_a_running_reload_is_done(chain: Chain):
    """A retry whose files nginx already serves takes one answer as proof: it first waits
    for a reload another process started (nginx's old workers may still answer then)."""
    import threading
    import time

    from django.utils import timezone

    from modoboa_pro.virtualhosts.adapters.reloader import ReloadBook

    host = VirtualHost.objects.create(hostname="settle.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    client = chain.redis.client()
    book = ReloadBook(client)
    client.set(book.running, "another-process", px=120_000)
    released: list = []

    def release_later() -> None:
        # Long after the retry reached its first check (it does in well under this).
        time.sleep(1.5)
        released.append(timezone.now())
        client.delete(book.running)
        client.publish(book.finished, "0")

    releaser = threading.Thread(target=release_later)
    services.retry_provisioning(host)
    releaser.start()
    chain.drain()
    releaser.join(30)
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    retry_run = host.events.order_by("-started_at", "-id").first().run_id
    steps = {
        e.step: e
        for e in host.events.filter(run_id=retry_run)
        if e.outcome in (constants.OUTCOME_OK, constants.OUTCOME_SKIPPED)
    }
    # Nothing was reloaded by the retry; each check that judges nginx with one answer
    # ended after the other reload did.
    for step in (constants.STEP_HTTP_SITE, constants.STEP_VERIFY):
        event = steps[step]
        ended = event.started_at + datetime.timedelta(seconds=event.duration)
        assert ended >= released[0], (step, ended, released)
    assert "nginx serves serial" in steps[constants.STEP_VERIFY].message

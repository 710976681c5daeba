"""The mail adapters' plain-value parts: rendering, version detection, settings checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from modoboa_pro.testing import free_port
from modoboa_pro.virtualhosts import mail
from modoboa_pro.virtualhosts.adapters import dovecot, mailprobe, postfix
from modoboa_pro.virtualhosts.adapters.mailfiles import HEADER, SniEntry
from modoboa_pro.virtualhosts.errors import (
    ConfigurationError,
    InvalidHostname,
    MailError,
    MailNotVerified,
    UnsupportedDovecot,
)

pytestmark = pytest.mark.mail

ENTRIES = [
    SniEntry("mail.example.org", Path("/s/b/fullchain.pem"), Path("/s/b/privkey.pem")),
    SniEntry("imap.example.com", Path("/s/a/fullchain.pem"), Path("/s/a/privkey.pem")),
]


def test_the_postfix_map_lists_each_name_with_its_key_then_its_chain():
    assert postfix.render_map(ENTRIES) == (
        HEADER
        + "imap.example.com /s/a/privkey.pem /s/a/fullchain.pem\n"
        + "mail.example.org /s/b/privkey.pem /s/b/fullchain.pem\n"
    )
    line = postfix.main_cf_line(Path("/etc/postfix/m"))
    assert line == "tls_server_sni_maps = hash:/etc/postfix/m"


def test_dovecot_23_reads_the_files_with_the_less_than_sign():
    assert dovecot.render(ENTRIES[:1], (2, 3)) == (
        HEADER + "local_name mail.example.org {\n"
        "  ssl_cert = </s/b/fullchain.pem\n"
        "  ssl_key = </s/b/privkey.pem\n"
        "}\n"
    )


def test_dovecot_24_names_the_files_with_its_own_settings():
    # Dovecot 2.4 is not in Debian bookworm: this syntax is checked here only.
    assert dovecot.render(ENTRIES[:1], (2, 4)) == (
        HEADER + "local_name mail.example.org {\n"
        "  ssl_server_cert_file = /s/b/fullchain.pem\n"
        "  ssl_server_key_file = /s/b/privkey.pem\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("output", "version"),
    [("2.3.19.1 (9b53102964)\n", (2, 3)), ("2.4.1-4 (7d8c0e5759)", (2, 4))],
)
def test_the_dovecot_version_picks_the_syntax(output, version):
    assert dovecot.parse_version(output) == version


@pytest.mark.parametrize("output", ["2.2.36 (1f10bfa63)", "3.0.0", "dovecot: not found", ""])
def test_any_other_dovecot_is_refused_clearly(output):
    with pytest.raises(UnsupportedDovecot, match="VIRTUALHOSTS_MAIL_SERVICES"):
        dovecot.parse_version(output)
    with pytest.raises(UnsupportedDovecot):
        dovecot.render(ENTRIES, (2, 2))


def test_the_installed_dovecot_is_detected():
    assert dovecot.installed_version(["dovecot"]) == (2, 3)  # Debian bookworm's 2.3.19


def test_nothing_unsafe_reaches_a_mail_configuration_line():
    with pytest.raises(InvalidHostname):
        SniEntry("mail.example.org\nssl = no", Path("/a"), Path("/b"))
    with pytest.raises(ConfigurationError, match="without spaces"):
        SniEntry("mail.example.org", Path("/a b/fullchain.pem"), Path("/b"))


def test_a_port_nobody_listens_on_is_named():
    port = free_port()
    with pytest.raises(MailNotVerified, match=f"Dovecot \\(imaps, 127.0.0.1:{port}\\)"):
        mailprobe.fetch("127.0.0.1", port, "imaps", "mail.example.org", timeout=1)


def settings_with(services, ports) -> mail.MailSettings:
    return mail.MailSettings(
        services=tuple(services),
        postfix_map=Path("/m"),
        postfix_config_dir=Path("/etc/postfix"),
        postfix_command=("postfix",),
        postmap_command=("postmap",),
        dovecot_include=Path("/i"),
        dovecot_config=Path("/etc/dovecot/dovecot.conf"),
        dovecot_command=("dovecot",),
        doveconf_command=("doveconf",),
        doveadm_command=("doveadm",),
        verify_ports=ports,
    )


def test_only_the_ports_of_the_services_deployed_to_are_verified():
    ports = {"smtp": 25, "imap": 143, "pop3s": 995}
    assert settings_with(["postfix"], ports).ports_to_verify() == {"smtp": 25}
    assert settings_with(["postfix", "dovecot"], ports).ports_to_verify() == ports
    with pytest.raises(MailError, match="only 'postfix' and 'dovecot'"):
        settings_with(["exim"], ports).ports_to_verify()
    with pytest.raises(MailError, match="'lmtp', not a mail service"):
        settings_with(["postfix"], {"lmtp": 24}).ports_to_verify()


def test_the_privileged_mail_job_takes_no_argument():
    import inspect

    from modoboa_pro.virtualhosts import jobs

    assert inspect.signature(jobs.mail_deploy).parameters == {}


# -- the ports side by side ---------------------------------------------------------------


def test_every_port_is_asked_side_by_side_and_a_laggard_is_named(monkeypatch):
    """All seven handshakes of a round are in flight together (a fetcher that waits for the
    seven at a barrier would time out if they came one after the other); a service that keeps
    presenting the old serial is named with what it showed."""
    import datetime
    import threading

    from modoboa_pro.virtualhosts.adapters.x509 import CertificateFacts

    ports = {service: 1000 + i for i, service in enumerate(mailprobe.SERVICES)}
    barrier = threading.Barrier(len(ports), timeout=5)
    now = datetime.datetime.now(datetime.UTC)

    def fetcher(service: str, port: int, hostname: str) -> CertificateFacts:
        barrier.wait()  # BrokenBarrierError (a test failure) unless all seven came together
        return CertificateFacts("new", now, now, "CA", (hostname,), "00")

    seen = mailprobe.confirm_all(fetcher, ports, "mail.example.test", "new")
    assert [s.service for s in seen] == list(ports)

    def imaps_lags(service: str, port: int, hostname: str) -> CertificateFacts:
        serial = "old" if service == "imaps" else "new"
        return CertificateFacts(serial, now, now, "CA", (hostname,), "00")

    monkeypatch.setattr(mailprobe, "VERIFY_TIMEOUT", 0.3)
    with pytest.raises(MailNotVerified, match=r"^Dovecot still not presenting .*imaps "
                       r"\(port \d+\): serial old\."):  # fmt: skip
        mailprobe.confirm_all(imaps_lags, ports, "mail.example.test", "new")

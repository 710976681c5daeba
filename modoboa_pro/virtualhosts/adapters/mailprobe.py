"""Which certificate a mail service presents for a name: STARTTLS (SMTP, IMAP, POP3) or
implicit TLS, always with SNI, as a mail client connects."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import MailNotVerified, StorageError
from .x509 import CertificateFacts, facts_from_der

# How each service is reached, and which program serves it.
STARTTLS_SMTP = "smtp"
STARTTLS_IMAP = "imap"
STARTTLS_POP3 = "pop3"
IMPLICIT = "implicit"
POSTFIX = "Postfix"
DOVECOT = "Dovecot"
SERVICES: dict[str, tuple[str, str]] = {
    "smtp": (STARTTLS_SMTP, POSTFIX),
    "submission": (STARTTLS_SMTP, POSTFIX),
    "submissions": (IMPLICIT, POSTFIX),
    "imap": (STARTTLS_IMAP, DOVECOT),
    "imaps": (IMPLICIT, DOVECOT),
    "pop3": (STARTTLS_POP3, DOVECOT),
    "pop3s": (IMPLICIT, DOVECOT),
}
TIMEOUT = 5.0
# Consecutive fresh connections presenting the serial: after a reload, processes started
# before it may still answer a connection or two with the old certificate.
STABLE_SUCCESSES = 3
STABLE_INTERVAL = 0.05
VERIFY_TIMEOUT = 15.0
_MAX_LINE = 4096


class _Lines:
    """Line-oriented reads on a plain socket (before TLS starts)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1024)
            if not chunk or len(self.buffer) > _MAX_LINE:
                raise ConnectionError(f"connection closed before a reply ({self.buffer!r})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("ascii", "replace").rstrip("\r")

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode("ascii") + b"\r\n")


def _smtp(conv: _Lines) -> None:
    def reply(expected: str) -> None:
        line = conv.line()
        while line[3:4] == "-":  # a multi-line reply goes on until "250 "
            line = conv.line()
        if not line.startswith(expected):
            raise ConnectionError(f"unexpected SMTP reply {line!r}")

    reply("220")
    conv.send("EHLO modoboa-pro.invalid")
    reply("250")
    conv.send("STARTTLS")
    reply("220")


def _imap(conv: _Lines) -> None:
    if not conv.line().startswith("* OK"):
        raise ConnectionError("no IMAP greeting")
    conv.send("a1 STARTTLS")
    while not (line := conv.line()).startswith("a1 "):
        pass
    if not line.startswith("a1 OK"):
        raise ConnectionError(f"IMAP STARTTLS refused: {line!r}")


def _pop3(conv: _Lines) -> None:
    if not conv.line().startswith("+OK"):
        raise ConnectionError("no POP3 greeting")
    conv.send("STLS")
    line = conv.line()
    if not line.startswith("+OK"):
        raise ConnectionError(f"POP3 STLS refused: {line!r}")


_STARTTLS: dict[str, Callable[[_Lines], None]] = {
    STARTTLS_SMTP: _smtp,
    STARTTLS_IMAP: _imap,
    STARTTLS_POP3: _pop3,
}


def fetch(
    address: str,
    port: int,
    service: str,
    server_name: str,
    timeout: float = TIMEOUT,
    *,
    cadata: str | None = None,
) -> CertificateFacts:
    """Facts of the leaf certificate ``service`` presents at ``address:port`` for SNI
    ``server_name``, reached as a client would (STARTTLS or implicit TLS).

    Without ``cadata`` nothing is verified: the serial is compared with what was stored.
    With it (PEM roots), the chain and the name are verified as a client would.
    """
    how, program = SERVICES[service]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cadata is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=cadata)
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            if how != IMPLICIT:
                _STARTTLS[how](_Lines(raw))
            with context.wrap_socket(raw, server_hostname=server_name) as conn:
                der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError, ConnectionError) as err:
        raise MailNotVerified(
            f"Cannot complete a TLS handshake with {program} ({service}, {address}:{port}) "
            f"for {server_name}: {err}. Check that it is running and listens there, or fix "
            "VIRTUALHOSTS_MAIL_VERIFY_PORTS."
        ) from err
    if not der:
        raise MailNotVerified(f"{program} ({service}, port {port}) presented no certificate.")
    try:
        return facts_from_der(der)
    except StorageError as err:
        raise MailNotVerified(
            f"{program} ({service}, port {port}) presented an unreadable certificate for "
            f"{server_name}.",
            detail=err.detail,
        ) from err


@dataclass(frozen=True)
class Seen:
    """What one service presented once steady."""

    service: str
    port: int
    program: str
    serial: str


def confirm_all(
    fetcher: Callable[[str, int, str], CertificateFacts],
    ports: Mapping[str, int],
    hostname: str,
    serial: str,
) -> list[Seen]:
    """Wait until every service in ``ports`` steadily presents ``serial`` for ``hostname``;
    ``fetcher(service, port, hostname)`` does one handshake. Raise naming every laggard.

    The ports are asked side by side, one round at a time: seven services one after the
    other made a mail host's check several times longer than one handshake."""
    deadline = time.monotonic() + VERIFY_TIMEOUT
    streaks = dict.fromkeys(ports, 0)
    last = dict.fromkeys(ports, "no handshake completed")

    def attempt(service: str) -> tuple[str, bool]:
        """(what was seen, whether it is ``serial``) for one handshake with ``service``."""
        try:
            facts = fetcher(service, ports[service], hostname)
        except MailNotVerified as err:
            return err.message, False
        return f"serial {facts.serial}", facts.serial == serial

    with ThreadPoolExecutor(max_workers=max(len(ports), 1)) as pool:
        while time.monotonic() < deadline:
            lagging = [s for s, count in streaks.items() if count < STABLE_SUCCESSES]
            for service, (seen, presents) in zip(
                lagging, pool.map(attempt, lagging), strict=True
            ):
                last[service] = seen
                streaks[service] = streaks[service] + 1 if presents else 0
            if all(count >= STABLE_SUCCESSES for count in streaks.values()):
                return [Seen(s, p, SERVICES[s][1], serial) for s, p in ports.items()]
            time.sleep(STABLE_INTERVAL)
    lagging = [s for s, count in streaks.items() if count < STABLE_SUCCESSES]
    programs = sorted({SERVICES[s][1] for s in lagging})
    detail = "; ".join(f"{s} (port {ports[s]}): {last[s]}" for s in lagging)
    raise MailNotVerified(
        f"{' and '.join(programs)} still not presenting the new certificate of {hostname} "
        f"(serial {serial}) after the mail deploy: {detail}. Check the line in "
        "main.cf / dovecot.conf (docs/mail.md) and the privileged worker's log."
    )

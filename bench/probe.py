"""What a client sees: the certificate nginx serves for a name, polled until it changes."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Collection

from cryptography import x509

# How often the bench looks while waiting: fine enough for sub-second latencies.
POLL_SECONDS = 0.005
# What nginx serves changes only when its workers do: a reload starts new ones and, about
# 100 ms later, the old ones leave. The bench handshakes for this long after each change of
# the master's children, every POLL_SECONDS, and otherwise once per FALLBACK_ROUND_SECONDS.
# Handshaking every pending host every few milliseconds cost the workers under measure
# about one core of the two (1 ms of client CPU a handshake, plus nginx's), which the
# baselines, handshaking only after their one reload, did not pay.
CHANGE_WINDOW_SECONDS = 0.25
FALLBACK_ROUND_SECONDS = 2.0


def served_serial(port: int, hostname: str) -> int | None:
    """Serial of the certificate served for ``hostname`` on 127.0.0.1:``port``, or None
    when the handshake is refused (nginx's default server rejects unknown names)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    if der is None:
        return None
    return x509.load_der_x509_certificate(der).serial_number


class Rounds:
    """When to handshake: ``due()`` is True every POLL_SECONDS for CHANGE_WINDOW_SECONDS
    after nginx's workers (``workers()``, its master's children) changed, and once per
    FALLBACK_ROUND_SECONDS otherwise. Without ``workers``, always (every POLL_SECONDS)."""

    def __init__(self, workers: Callable[[], Collection[object]] | None) -> None:
        self._workers = workers
        self._seen: frozenset[object] | None = None
        self._busy_until = self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if self._workers is None:
            return True
        current = frozenset(self._workers())
        if current != self._seen:
            self._seen, self._busy_until = current, now + CHANGE_WINDOW_SECONDS
        if now < self._busy_until or now >= self._next:
            self._next = now + FALLBACK_ROUND_SECONDS
            return True
        return False


def wait_served(
    port: int,
    hostname: str,
    *,
    not_serial: int | None = None,
    timeout: float = 120.0,
    workers: Callable[[], Collection[object]] | None = None,
) -> tuple[int, float]:
    """Handshake until a certificate other than ``not_serial`` is served; (serial, when)
    with ``when`` from ``time.monotonic()``. TimeoutError past ``timeout``. ``workers``:
    nginx's, to handshake only around their changes (``Rounds``)."""
    deadline = time.monotonic() + timeout
    rounds = Rounds(workers)
    while True:
        if rounds.due():
            serial = served_serial(port, hostname)
            now = time.monotonic()
            if serial is not None and serial != not_serial:
                return serial, now
        if time.monotonic() > deadline:
            raise TimeoutError(f"{hostname}: no new certificate served after {timeout:.0f}s")
        time.sleep(POLL_SECONDS)

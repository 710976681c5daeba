"""What a client sees: the certificate nginx serves for a name, polled until it changes."""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

# How often the bench handshakes while waiting: fine enough for sub-second latencies,
# coarse enough not to starve the workers of CPU on 2 cores.
POLL_SECONDS = 0.005


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


def wait_served(
    port: int, hostname: str, *, not_serial: int | None = None, timeout: float = 120.0
) -> tuple[int, float]:
    """Handshake until a certificate other than ``not_serial`` is served; (serial, when)
    with ``when`` from ``time.monotonic()``. TimeoutError past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        serial = served_serial(port, hostname)
        now = time.monotonic()
        if serial is not None and serial != not_serial:
            return serial, now
        if now > deadline:
            raise TimeoutError(f"{hostname}: no new certificate served after {timeout:.0f}s")
        time.sleep(POLL_SECONDS)

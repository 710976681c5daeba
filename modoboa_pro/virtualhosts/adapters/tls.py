"""Check which certificate a TLS server really presents for a name."""

from __future__ import annotations

import socket
import ssl
import time

from ..errors import DeployNotVerified, StorageError
from .storage import CertificateFacts, facts_from_der


def fetch_served_certificate(
    address: str, port: int, server_name: str, timeout: float = 5.0
) -> CertificateFacts:
    """Facts of the leaf certificate served at ``address:port`` for SNI ``server_name``."""
    # No verification: we compare serials with what we stored, trust is the CA's business.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as err:
        raise DeployNotVerified(
            f"Cannot complete a TLS handshake with {address}:{port} for {server_name}: "
            f"{err}. Check that nginx is running and listens there.",
        ) from err
    if not der:
        raise DeployNotVerified(f"{address}:{port} presented no certificate for {server_name}.")
    try:
        return facts_from_der(der)
    except StorageError as err:
        raise DeployNotVerified(
            f"{address}:{port} presented an unreadable certificate for {server_name}.",
            detail=err.detail,
        ) from err


def _normalize(serial: str) -> str:
    cleaned = serial.replace(":", "").strip().lower()
    try:
        return format(int(cleaned, 16), "x")
    except ValueError:
        return cleaned


def wait_for_serial(
    address: str,
    port: int,
    server_name: str,
    serial: str,
    timeout: float = 10.0,
    interval: float = 0.1,
) -> CertificateFacts:
    """Poll until the server presents certificate ``serial``; return its facts.

    Polling, because a reload is asynchronous: old workers keep serving the
    previous certificate until their connections end.
    """
    expected = _normalize(serial)
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Bound each attempt by the time left, so the whole wait honours ``timeout``.
            remaining = deadline - time.monotonic()
            facts = fetch_served_certificate(
                address, port, server_name, timeout=max(0.2, min(5.0, remaining))
            )
        except DeployNotVerified as err:
            last = f"no certificate could be read for {server_name} ({err})"
        else:
            if _normalize(facts.serial) == expected:
                return facts
            last = f"nginx still serves serial {facts.serial} for {server_name}"
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise DeployNotVerified(
        f"After {timeout:g} s, {last}; expected serial {expected}. The reload may have "
        "failed (nginx only logs it): run the nginx configuration test and check its "
        "error log, then retry."
    )

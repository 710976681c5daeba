"""Check which certificate a TLS server really presents for a name."""

from __future__ import annotations

import socket
import ssl

from ..errors import DeployNotVerified, StorageError
from .x509 import CertificateFacts, facts_from_der


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


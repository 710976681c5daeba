"""X.509 material: certificate facts, private keys and certificate requests."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from ..errors import ConfigurationError, StorageError
from .files import safe_hostname

KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class CertificateFacts:
    """What the app records about a certificate; plain values only."""

    serial: str  # lower-case hex, no colons
    not_before: datetime.datetime  # timezone-aware UTC
    not_after: datetime.datetime  # timezone-aware UTC
    issuer: str
    names: tuple[str, ...]  # DNS subjectAltNames
    fingerprint_sha256: str  # lower-case hex of the DER


def _facts(cert: x509.Certificate) -> CertificateFacts:
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(issuer_cn[0].value) if issuer_cn else cert.issuer.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateFacts(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=issuer,
        names=names,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def load_leaf(pem: bytes) -> x509.Certificate:
    match = _PEM_CERT_RE.search(pem or b"")
    try:
        if match is None:
            raise ValueError("no PEM certificate block")
        return x509.load_pem_x509_certificate(match.group(0))
    except ValueError as err:
        raise StorageError(
            "The file is not a PEM certificate (no readable '-----BEGIN CERTIFICATE-----' "
            "block). Remove or replace it; the next run will issue a new certificate.",
            detail=str(err),
        ) from err


def parse_leaf(pem: bytes) -> CertificateFacts:
    """Facts of the first certificate in a PEM chain (the leaf, in a fullchain)."""
    return _facts(load_leaf(pem))


def facts_from_der(der: bytes) -> CertificateFacts:
    """Facts of a DER certificate (e.g. the one a TLS server presents)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise StorageError(
            "The peer sent data that is not a DER certificate.", detail=str(err)
        ) from err
    return _facts(cert)


# -- keys and CSRs ----------------------------------------------------------


def generate_private_key(key_type: str = "ecdsa-p256") -> bytes:
    """A new unencrypted PKCS#8 PEM private key of ``key_type`` (see ``KEY_TYPES``)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    else:
        raise ConfigurationError(
            f"Unknown certificate key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}."
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(key_pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise StorageError(
            "The private key is not an unencrypted PEM key; it cannot be used.",
            detail=str(err),
        ) from err


def key_matches(fullchain_pem: bytes, key_pem: bytes) -> bool:
    """Whether ``key_pem`` is the private key of the leaf certificate of ``fullchain_pem``."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    leaf = load_leaf(fullchain_pem).public_key().public_bytes(*spki)
    return load_key(key_pem).public_key().public_bytes(*spki) == leaf


def make_csr(hostname: str, key_pem: bytes) -> bytes:
    """A PEM CSR for ``hostname`` (SAN and, when it fits, CN) signed by ``key_pem``."""
    safe_hostname(hostname)
    key = load_key(key_pem)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise StorageError("Only ECDSA and RSA keys can sign a certificate request.")
    # X.509 caps a CN at 64 characters; CAs read the names from the SAN anyway.
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, hostname)] if len(hostname) <= 64 else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)

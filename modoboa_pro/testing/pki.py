"""Throwaway X.509 material for tests: a CA, server certificates and crafted host chains."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# EC P-256 keys: generated in microseconds, unlike RSA, and accepted by Go (Pebble), nginx and
# OpenSSL alike.
_CURVE = ec.SECP256R1()
# Backdate certificates a little so a clock skew between processes never makes them "not yet
# valid".
_BACKDATE = datetime.timedelta(minutes=5)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` with ``mode`` set at creation, so a key is never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask and ignored on overwrite
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    subject = _name(common_name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    ips: Sequence[str],
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """A TLS server certificate; ``issuer=None`` makes it self-signed with ``key``."""
    if not names and not ips:
        raise ValueError("a certificate needs at least one name or IP address")
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    subject = _name(names[0] if names else ips[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_ca(
    directory: Path, *, common_name: str = "modoboa_pro test CA", stem: str = "ca"
) -> tuple[Path, Path]:
    """Create a self-signed CA valid for 10 years; return ``(cert_path, key_path)``."""
    key = _new_key()
    now = _now()
    cert = _ca_certificate(key, common_name, now - _BACKDATE, now + datetime.timedelta(days=3650))
    return (
        _write(directory / f"{stem}.pem", _cert_pem(cert), 0o644),
        _write(directory / f"{stem}-key.pem", _key_pem(key), 0o600),
    )


def make_server_cert(
    directory: Path,
    ca_cert_path: Path,
    ca_key_path: Path,
    *,
    names: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    stem: str = "server",
    days: int = 365,
) -> tuple[Path, Path]:
    """Issue a server certificate from the CA files; return ``(cert_path, key_path)``."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca_key_path}: expected an EC key made by make_ca()")
    key = _new_key()
    now = _now()
    cert = _leaf_certificate(
        key,
        names,
        ips,
        ca_cert,
        ca_key,
        now - _BACKDATE,
        now + datetime.timedelta(days=days),
    )
    return (
        _write(directory / f"{stem}.pem", _cert_pem(cert), 0o644),
        _write(directory / f"{stem}-key.pem", _key_pem(key), 0o600),
    )


def validity(
    *,
    lifetime: datetime.timedelta = datetime.timedelta(days=90),
    remaining: datetime.timedelta = datetime.timedelta(days=5),
    now: datetime.datetime | None = None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """``(not_before, not_after)`` of a certificate of ``lifetime`` with ``remaining`` left."""
    now = now or _now()
    not_after = now + remaining
    return not_after - lifetime, not_after


def make_chain_pem(
    names: Sequence[str],
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    self_signed: bool = False,
) -> tuple[bytes, bytes]:
    """Craft ``(fullchain_pem, key_pem)`` for ``names`` with exactly the given validity.

    The leaf comes first, then (unless ``self_signed``) a throwaway issuer, like the
    ``fullchain.pem`` an ACME client stores. Validity dates may lie in the past or the future.
    """
    key = _new_key()
    if self_signed:
        leaf = _leaf_certificate(key, names, (), None, key, not_before, not_after)
        return _cert_pem(leaf), _key_pem(key)
    issuer_key = _new_key()
    # The issuer outlives the leaf on both sides so only the leaf's dates matter to a checker.
    issuer = _ca_certificate(
        issuer_key,
        "modoboa_pro fake intermediate",
        not_before - datetime.timedelta(days=1),
        not_after + datetime.timedelta(days=1),
    )
    leaf = _leaf_certificate(key, names, (), issuer, issuer_key, not_before, not_after)
    return _cert_pem(leaf) + _cert_pem(issuer), _key_pem(key)


def make_self_signed_leaf(
    directory: Path,
    names: Sequence[str],
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    chain: bool = True,
    cert_name: str = "fullchain.pem",
    key_name: str = "privkey.pem",
) -> tuple[Path, Path]:
    """Write a stand-in host certificate; return ``(fullchain_path, key_path)``.

    Defaults to a 90-day certificate with 5 days left (due for renewal). With ``chain`` the
    leaf is signed by a throwaway issuer appended to the file; without, it is self-signed.
    """
    default_before, default_after = validity()
    fullchain, key = make_chain_pem(
        names,
        not_before=not_before or default_before,
        not_after=not_after or default_after,
        self_signed=not chain,
    )
    return (
        _write(directory / cert_name, fullchain, 0o644),
        _write(directory / key_name, key, 0o600),
    )

"""Helpers shared by the adapter tests: test certificates, hostnames, file modes."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from modoboa_pro.virtualhosts.adapters import x509

HOST = "mail.example.org"
UNSAFE_HOSTNAMES = [
    "",
    "..",
    "../etc",
    "a/b",
    ".hidden",
    "a b",
    "a\x00b",
    "a..b",
    "-a.example",
    "a.example.",
    "a\n.example",
    "x" * 64 + ".example",
]


def make_cert(
    key_pem: bytes,
    names: tuple[str, ...] = (HOST,),
    serial: int | None = None,
    issuer_cn: str | None = "Test CA",
    days: int = 90,
) -> bytes:
    """A PEM certificate for ``names`` with the public key of ``key_pem``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    issuer = (
        cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)])
        if issuer_cn
        else cx509.Name([cx509.NameAttribute(NameOID.ORGANIZATION_NAME, "No CN Org")])
    )
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    builder = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else cx509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            cx509.SubjectAlternativeName([cx509.DNSName(n) for n in names]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_pair(names: tuple[str, ...] = (HOST,), serial: int | None = None) -> tuple[bytes, bytes]:
    """A ``(fullchain, privkey)`` PEM pair that matches."""
    key_pem = x509.generate_private_key()
    return make_cert(key_pem, names, serial), key_pem


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777

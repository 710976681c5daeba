"""Real certificate files for the scan scenario, generated once and kept in the cache.

One throwaway CA and one ECDSA leaf per host (90 days, 80 left: not due by the lifetime
rule), stored by the plugin's own ``storage.write_certificate_pair`` (the layout the scan
reads). Which hosts are due is set in the database instead (see ``scan_child``).
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CACHE_VERSION = 2
# Regenerated past this age, so that the certificates stay far from due.
MAX_AGE = datetime.timedelta(days=20)
DAYS_LEFT = 80
THRESHOLD_DAYS = 30


def hostname(index: int) -> str:
    return f"h{index:05d}.scan.bench.test"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure(cache: Path, count: int) -> Path:
    """The storage root holding ``count`` hosts' pairs (built on first need, then reused)."""
    root = cache / f"scan-certs-v{CACHE_VERSION}"
    meta_path = root / "meta.json"
    now = datetime.datetime.now(datetime.UTC)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        made = datetime.datetime.fromisoformat(meta["made_at"])
        if meta["count"] >= count and now - made < MAX_AGE:
            return root / "storage"
    from modoboa_pro.virtualhosts.adapters import storage

    shutil.rmtree(root, ignore_errors=True)
    (root / "storage").mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("modoboa-pro bench CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for i in range(count):
        name = hostname(i)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=90 - DAYS_LEFT))
            .not_valid_after(now + datetime.timedelta(days=DAYS_LEFT))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            # Real leaves carry it; it is what the CA's renewal information (ARI) is keyed on.
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        storage.write_certificate_pair(root / "storage", name, _pem(leaf) + _pem(ca), key_pem)
    meta_path.write_text(json.dumps({"count": count, "made_at": now.isoformat()}))
    return root / "storage"

"""X.509 material: certificate facts, private keys and certificate requests."""

from __future__ import annotations

import base64
import datetime
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from ..errors import ConfigurationError, StorageError
from .files import safe_hostname

KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
_PEM_KEY_BEGIN = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----")


@dataclass(frozen=True)
class CertificateFacts:
    """What the app records about a certificate; plain values only."""

    serial: str  # lower-case hex, no colons
    not_before: datetime.datetime  # timezone-aware UTC
    not_after: datetime.datetime  # timezone-aware UTC
    issuer: str
    names: tuple[str, ...]  # DNS subjectAltNames
    fingerprint_sha256: str  # lower-case hex of the DER
    # RFC 9773 certificate identifier (ARI, ``replaces``); "" without an AKI extension.
    ari_id: str = ""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ari_certificate_id(cert: x509.Certificate) -> str:
    """The RFC 9773 (4.1) identifier: base64url(AKI keyIdentifier) "." base64url(serial),
    the serial as the content octets of its DER INTEGER (a leading zero byte when the
    high bit is set, as in the RFC's example ``AIdlQyE``). "" without a key identifier."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    if not aki.key_identifier:
        return ""
    serial = cert.serial_number
    # Two's complement, minimal: one more bit than the magnitude needs (the sign).
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_der)}"


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
        ari_id=ari_certificate_id(cert),
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


# -- stored pairs, checked as nginx will load them ---------------------------


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM chain, in file order.

    Stricter than ``load_leaf``: nginx reads the whole file, so a truncated or
    undecodable block after a good leaf fails ``nginx -t`` as surely as a bad leaf.
    """
    if not pem.strip():
        raise StorageError("the file is empty")
    starts = [m.start() for m in re.finditer(re.escape(_PEM_CERT_BEGIN), pem)]
    if not starts:
        raise StorageError(
            "the file is not a PEM certificate (no readable '-----BEGIN CERTIFICATE-----' block)"
        )
    chain = []
    for number, (start, end) in enumerate(zip(starts, [*starts[1:], len(pem)], strict=True), 1):
        block = _PEM_CERT_RE.match(pem, start, end)
        if block is None:
            raise StorageError(
                f"the file is truncated: certificate {number} has no "
                "'-----END CERTIFICATE-----' line"
            )
        try:
            chain.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as err:
            raise StorageError(
                f"certificate {number} of the file cannot be decoded (truncated or damaged)",
                detail=str(err),
            ) from err
    return chain


def describe_key(key: PrivateKeyTypes) -> str:
    """``an ECDSA secp384r1 key``, ``an RSA-1024 key``...: what an operator recognises."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an ECDSA {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    names = {
        ed25519.Ed25519PrivateKey: "an Ed25519 key",
        ed448.Ed448PrivateKey: "an Ed448 key",
        dsa.DSAPrivateKey: "a DSA key",
    }
    return next((n for kind, n in names.items() if isinstance(key, kind)), "a key")


def key_type(key: PrivateKeyTypes) -> str | None:
    """The ``KEY_TYPES`` entry ``key`` is, or None for a type this product never makes."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    if isinstance(key, rsa.RSAPrivateKey) and f"rsa-{key.key_size}" in KEY_TYPES:
        return f"rsa-{key.key_size}"
    return None


def load_private_key(pem: bytes) -> PrivateKeyTypes:
    """A stored private key, refused when unreadable or of a type this product never makes.

    A key of another type was not written by this product: something replaced it.
    """
    if not pem.strip():
        raise StorageError("the file is empty")
    begin = _PEM_KEY_BEGIN.search(pem)
    if begin is not None and b"-----END " + begin.group(1) + b"-----" not in pem:
        raise StorageError(
            f"the key is truncated (no '-----END {begin.group(1).decode()}-----' line)"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise StorageError(
            "the file is not an unencrypted PEM private key", detail=str(err)
        ) from err
    if key_type(key) is None:
        raise StorageError(
            f"it holds {describe_key(key)}; this product makes only ECDSA P-256 and RSA "
            "2048, 3072 or 4096-bit keys (ACME_KEY_TYPE), so it did not write this one"
        )
    return key


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_order(chain: list[x509.Certificate], key: PrivateKeyTypes) -> None:
    """The key's certificate first, then each certificate's issuer: what nginx expects.

    nginx takes the first certificate as the server's. With another one first,
    ``nginx -t`` fails ("key values mismatch") when both have the same key type;
    when they differ (an RSA intermediate ahead of an ECDSA leaf) it passes, and
    every TLS handshake for the host fails after the reload.
    """
    own = _spki(key.public_key())
    position = next((i for i, cert in enumerate(chain) if _spki(cert.public_key()) == own), None)
    if position is None:
        return  # no certificate of this key at all: check_key_matches says so
    if position > 0:
        raise StorageError(
            f"the chain is in the wrong order: the certificate of the key is number "
            f"{position + 1} of {len(chain)}, and it must come first"
        )
    for number, (cert, issuer) in enumerate(zip(chain, chain[1:], strict=False), 1):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise StorageError(
                f"certificate {number} of the chain is not issued by certificate "
                f"{number + 1}: the chain is in the wrong order or mixes two chains",
                detail=str(err),
            ) from err


def check_key_matches(leaf: x509.Certificate, key: PrivateKeyTypes) -> None:
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise StorageError("the private key does not match the certificate's public key")


def check_names(
    leaf: x509.Certificate, hostname: str, facts: CertificateFacts | None = None
) -> None:
    """The certificate must name the host: nginx would serve another name's without a word.
    ``facts``: the leaf's, when the caller has them already."""
    names = (facts or _facts(leaf)).names
    if hostname not in names:
        raise StorageError(
            f"the certificate does not cover {hostname}: it is for "
            f"{', '.join(names) or 'no DNS name'}"
        )


def check_pair(fullchain_pem: bytes, privkey_pem: bytes) -> x509.Certificate:
    """Raise StorageError unless nginx can load this pair; return its leaf."""
    chain = load_chain(fullchain_pem)
    key = load_private_key(privkey_pem)
    check_order(chain, key)
    check_key_matches(chain[0], key)
    return chain[0]


def facts_of(cert: x509.Certificate) -> CertificateFacts:
    return _facts(cert)


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

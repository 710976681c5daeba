"""Tests for the x509 adapter: certificate facts, parsing, private keys, CSRs."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts.adapters import x509
from modoboa_pro.virtualhosts.errors import ConfigurationError, InvalidHostname, StorageError

from .helpers import HOST, UNSAFE_HOSTNAMES, make_cert

# -- parsing ------------------------------------------------------------------


def test_parse_leaf_facts():
    key = x509.generate_private_key()
    pem = make_cert(key, (HOST, "www.example.org"), serial=0xABCDEF0123)
    facts = x509.parse_leaf(pem)
    cert = cx509.load_pem_x509_certificate(pem)
    assert facts.serial == "abcdef0123"
    assert facts.names == (HOST, "www.example.org")
    assert facts.issuer == "Test CA"
    assert (
        facts.not_before.tzinfo is not None and facts.not_after.utcoffset() == datetime.timedelta(0)
    )
    assert facts.not_after == cert.not_valid_after_utc
    assert facts.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    with pytest.raises(AttributeError):
        facts.serial = "0"  # type: ignore[misc]


def test_parse_leaf_reads_first_certificate_of_chain():
    leaf = make_cert(x509.generate_private_key(), (HOST,), serial=1)
    issuer = make_cert(x509.generate_private_key(), ("ca.example",), serial=2)
    assert x509.parse_leaf(leaf + issuer).serial == "1"
    assert x509.parse_leaf(b"garbage before\n" + leaf).serial == "1"


def test_parse_leaf_issuer_without_cn():
    pem = make_cert(x509.generate_private_key(), issuer_cn=None)
    assert x509.parse_leaf(pem).issuer == "O=No CN Org"


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_parse_leaf_rejects_garbage(pem):
    with pytest.raises(StorageError, match="not a PEM certificate"):
        x509.parse_leaf(pem)


def test_facts_from_der():
    pem = make_cert(x509.generate_private_key(), serial=42)
    der = cx509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert x509.facts_from_der(der) == x509.parse_leaf(pem)
    with pytest.raises(StorageError):
        x509.facts_from_der(b"\x30\x03junk")


# -- keys and CSRs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        ("ecdsa-p256", ec.EllipticCurvePrivateKey, 256),
        ("rsa-2048", rsa.RSAPrivateKey, 2048),
        ("rsa-3072", rsa.RSAPrivateKey, 3072),
        ("rsa-4096", rsa.RSAPrivateKey, 4096),
    ],
)
def test_generate_private_key(key_type, kind, size):
    pem = x509.generate_private_key(key_type)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, kind)
    assert key.key_size == size


def test_generate_private_key_default_is_p256():
    key = serialization.load_pem_private_key(x509.generate_private_key(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_generate_private_key_unknown_type():
    with pytest.raises(ConfigurationError, match="ecdsa-p256, rsa-2048") as info:
        x509.generate_private_key("dsa-1024")
    assert isinstance(info.value, ImproperlyConfigured)


def test_make_csr():
    key = x509.generate_private_key()
    csr = cx509.load_pem_x509_csr(x509.make_csr(HOST, key))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    san = csr.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    assert san.get_values_for_type(cx509.DNSName) == [HOST]
    public = serialization.load_pem_private_key(key, password=None).public_key()
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert csr.public_key().public_bytes(*spki) == public.public_bytes(*spki)


def test_make_csr_long_hostname_has_no_cn():
    hostname = ".".join(["a" * 40, "b" * 40, "example"])
    csr = cx509.load_pem_x509_csr(x509.make_csr(hostname, x509.generate_private_key()))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = csr.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    assert san.get_values_for_type(cx509.DNSName) == [hostname]


def test_make_csr_bad_key():
    with pytest.raises(StorageError, match="not an unencrypted PEM key"):
        x509.make_csr(HOST, b"nope")


@pytest.mark.parametrize("hostname", UNSAFE_HOSTNAMES)
def test_make_csr_refuses_unsafe_hostnames(hostname):
    with pytest.raises(InvalidHostname):
        x509.make_csr(hostname, x509.generate_private_key())


# -- stored pairs, checked as nginx loads them ------------------------------------


def _chain_and_key() -> tuple[list[bytes], bytes]:
    """A leaf and its issuer (as PEM blocks), and the leaf's key."""
    not_before, not_after = validity()
    fullchain, key = make_chain_pem([HOST], not_before=not_before, not_after=not_after)
    end = b"-----END CERTIFICATE-----\n"
    return [b + end for b in fullchain.split(end) if b.strip()], key


def test_check_pair_accepts_a_chain_and_its_key():
    blocks, key = _chain_and_key()
    leaf = x509.check_pair(b"".join(blocks), key)
    assert HOST in x509.facts_of(leaf).names
    # Text around the blocks is ignored, as nginx ignores it.
    x509.check_pair(b"# comment\n" + b"".join(blocks) + b"\n\n", key)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "the file is empty"),
        (lambda b: b"  \n", "the file is empty"),
        (lambda b: b"garbage", "not a PEM certificate"),
        (lambda b: b[0][:200], "truncated: certificate 1 has no"),
        (lambda b: b[0][:200] + b[1], "truncated: certificate 1 has no"),
        (lambda b: b[0] + b[1][:200], "truncated: certificate 2 has no"),
        (
            lambda b: b[0] + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate 2 of the file cannot be decoded",
        ),
        (lambda b: b[1] + b[0], "wrong order: the certificate of the key is number 2 of 2"),
        (lambda b: b[0] + b[0], "certificate 1 of the chain is not issued by certificate 2"),
    ],
    ids=[
        "empty",
        "blank",
        "not-pem",
        "leaf-cut",
        "leaf-cut-before-issuer",
        "issuer-cut",
        "undecodable",
        "reversed",
        "foreign-issuer",
    ],
)
def test_check_pair_refuses_damaged_chains(damage, message):
    blocks, key = _chain_and_key()
    with pytest.raises(StorageError, match=message):
        x509.check_pair(damage(blocks), key)


def _ed25519_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ec_key(curve: ec.EllipticCurve) -> bytes:
    return ec.generate_private_key(curve).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("key_pem", "message"),
    [
        (b"", "the file is empty"),
        (b"not a key", "not an unencrypted PEM private key"),
        (x509.generate_private_key()[:80], r"truncated \(no '-----END PRIVATE KEY-----'"),
        (
            serialization.load_pem_private_key(x509.generate_private_key(), None).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "not an unencrypted PEM private key",
        ),
        (_ed25519_key(), "it holds an Ed25519 key; this product makes only"),
        (_ec_key(ec.SECP384R1()), "it holds an ECDSA secp384r1 key"),
    ],
    ids=["empty", "not-pem", "truncated", "encrypted", "ed25519", "p384"],
)
def test_load_private_key_refuses_what_was_not_written_here(key_pem, message):
    with pytest.raises(StorageError, match=message):
        x509.load_private_key(key_pem)


def test_key_types_are_the_ones_generated():
    for key_type in x509.KEY_TYPES[:2]:  # RSA-3072/4096 are slow to generate
        key = x509.load_private_key(x509.generate_private_key(key_type))
        assert x509.key_type(key) == key_type


def test_check_pair_refuses_another_key():
    blocks, _ = _chain_and_key()
    with pytest.raises(StorageError, match="does not match the certificate"):
        x509.check_pair(b"".join(blocks), x509.generate_private_key())


def test_check_names():
    blocks, _ = _chain_and_key()
    leaf = x509.load_chain(blocks[0])[0]
    x509.check_names(leaf, HOST)
    with pytest.raises(StorageError, match=f"does not cover other.example: it is for {HOST}"):
        x509.check_names(leaf, "other.example")

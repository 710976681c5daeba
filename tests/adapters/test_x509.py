"""Tests for the x509 adapter: certificate facts, parsing, private keys, CSRs."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured

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

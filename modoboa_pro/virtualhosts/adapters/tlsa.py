"""TLSA records (RFC 6698, RFC 7672): the digests a mail host's keys give, and what DNS says.

Plain values in, plain values out: a key or certificate gives a ``3 1 1`` / ``2 1 1``
digest (SHA-256 of the SubjectPublicKeyInfo); a lookup gives the records published at a
name, through the DNS server the pre-flight asks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dns.exception
import dns.rdatatype
import dns.resolver
from cryptography import x509 as crypto_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ..errors import TlsaLookupFailed, VirtualHostError
from . import preflight, x509

# RFC 7218 names: DANE-TA pins a CA of the chain, DANE-EE the server's own key.
USAGE_DANE_TA = 2
USAGE_DANE_EE = 3
SELECTOR_SPKI = 1
MATCHING_SHA256 = 1


@dataclass(frozen=True)
class TlsaRecord:
    """One TLSA record; ``data`` is lower-case hex."""

    usage: int
    selector: int
    matching_type: int
    data: str

    @property
    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type} {self.data}"

    def is_spki_sha256(self, usage: int) -> bool:
        return (self.usage, self.selector, self.matching_type) == (
            usage,
            SELECTOR_SPKI,
            MATCHING_SHA256,
        )


def _spki_sha256(public_key: PublicKeyTypes) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def key_digest(key_pem: bytes) -> str:
    """The ``3 1 1`` data of a private key (PEM): SHA-256 of its public key's SPKI."""
    return _spki_sha256(x509.load_key(key_pem).public_key())


def certificate_digest(cert: crypto_x509.Certificate) -> str:
    """The ``2 1 1`` (for a CA) or ``3 1 1`` (for a leaf) data of a certificate."""
    return _spki_sha256(cert.public_key())


def end_entity(digest: str) -> TlsaRecord:
    return TlsaRecord(USAGE_DANE_EE, SELECTOR_SPKI, MATCHING_SHA256, digest)


def record_name(port: int, hostname: str) -> str:
    """``_25._tcp.mail.example.com``: where the records of one service port live."""
    return f"_{port}._tcp.{hostname}"


def zone_line(name: str, record: TlsaRecord) -> str:
    """A line ready to paste into a zone file (the name absolute, with its dot)."""
    return f"{name}. IN TLSA {record.text}"


def lookup(name: str, resolver_spec: str | None) -> list[TlsaRecord]:
    """The TLSA records published at ``name`` ([] when there are none or the name does not
    exist); TlsaLookupFailed when the DNS server cannot say."""
    asked = resolver_spec or preflight.SYSTEM_RESOLVER
    try:
        resolver = preflight.resolver(resolver_spec)
        answer = resolver.resolve(name, "TLSA", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except VirtualHostError as err:  # no resolver configured, or a malformed setting
        raise TlsaLookupFailed(f"TLSA lookup of {name}: {err.message}") from err
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as err:
        reason = "no answer in time" if isinstance(err, dns.exception.Timeout) else "SERVFAIL"
        raise TlsaLookupFailed(
            f"TLSA lookup of {name} at {asked} failed ({reason}). Check that the resolver "
            "answers (VIRTUALHOSTS_PREFLIGHT_RESOLVER)."
        ) from err
    except dns.exception.DNSException as err:
        raise TlsaLookupFailed(f"TLSA lookup of {name} at {asked} failed: {err}.") from err
    return [
        TlsaRecord(rdata.usage, rdata.selector, rdata.mtype, rdata.cert.hex())
        for rdata in answer
        if rdata.rdtype == dns.rdatatype.TLSA
    ]

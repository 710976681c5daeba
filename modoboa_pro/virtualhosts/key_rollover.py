"""Pure policy of DANE-safe key rollover: which key a certificate order uses, and what the
published TLSA records say. No I/O: the pipeline and the API gather the plain values.

A mail server's ``3 1 1`` TLSA record pins its key: a renewal with a new key breaks inbound
mail from DANE-validating senders until the record is updated. So a mail host keeps its key
across renewals, a next key waits beside it, and it rotates in only once its record is
published (or the operator forces it). See docs/mail.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .adapters.tlsa import USAGE_DANE_EE, USAGE_DANE_TA, TlsaRecord

# What an order's key is.
FRESH = "fresh"  # a new key, used once (web hosts; a mail host without a usable key)
KEEP = "keep"  # the current certificate's key again
ROTATE = "rotate"  # the pre-generated next key, whose record is published (or forced)

# Roles of a host's keys in the records it shows.
ROLE_CURRENT = "current"
ROLE_NEXT = "next"


@dataclass(frozen=True)
class Publication:
    """Whether the next key's ``3 1 1`` record is published at every checked name.

    ``published`` is None when DNS could not say (``problem`` tells why).
    """

    published: bool | None
    missing: tuple[str, ...] = ()  # names without it
    problem: str = ""


@dataclass(frozen=True)
class KeyChoice:
    action: str  # FRESH, KEEP or ROTATE
    reason: str  # for the host's history, written for the operator


def publication(
    next_digest: str, records: Mapping[str, Sequence[TlsaRecord]], problem: str = ""
) -> Publication:
    """Whether ``next_digest`` is published as ``3 1 1`` at every name of ``records``.

    Every name: a port whose record lacks the key would refuse mail from DANE senders.
    ``problem``: a lookup failed, so nothing is known.
    """
    if problem:
        return Publication(None, problem=problem)
    missing = tuple(
        name
        for name, found in records.items()
        if not any(r.is_spki_sha256(USAGE_DANE_EE) and r.data == next_digest for r in found)
    )
    return Publication(bool(records) and not missing, missing)


def choose_key(
    *,
    serves_mail: bool,
    keep_key: bool,
    has_current: bool,
    has_next: bool,
    forced: bool,
    next_key: Publication,
) -> KeyChoice:
    """The key of the next order; DNS failures never block it (the current key is kept)."""
    if not serves_mail:
        return KeyChoice(FRESH, "a new key for every certificate (not a mail host)")
    if not keep_key:
        return KeyChoice(FRESH, "a new key (VIRTUALHOSTS_MAIL_KEEP_KEY is off)")
    if not has_next:
        # Only when the next key cannot be stored: keep what DNS may pin.
        if has_current:
            return KeyChoice(KEEP, "current key kept (no next key could be prepared)")
        return KeyChoice(FRESH, "a new key (no usable key on disk)")
    if forced:
        return KeyChoice(ROTATE, "next key rotated in: the operator forced it (rotate-key)")
    if next_key.published:
        return KeyChoice(ROTATE, "next key rotated in: its TLSA 3 1 1 record is published")
    if not has_current:
        # Nothing on disk to keep (first certificate, or a pair found unusable): any key
        # will do, and a fresh one keeps the published next key for the next rotation.
        return KeyChoice(FRESH, "a new key (no usable current key on disk)")
    if next_key.published is None:
        return KeyChoice(
            KEEP,
            f"current key kept: whether the next key's TLSA record is published is unknown "
            f"({next_key.problem}); a DNS failure never blocks a renewal",
        )
    return KeyChoice(
        KEEP,
        "current key kept: the next key's TLSA 3 1 1 record is not published at "
        f"{', '.join(next_key.missing)}; publish it and the first renewal that finds it "
        "rotates to the next key",
    )


def foreign_ca_pins(
    records: Mapping[str, Sequence[TlsaRecord]], chain_digests: Sequence[str]
) -> list[str]:
    """Warnings for the ``2 1 1`` records that pin no CA of the served chain.

    Such a record fails DANE as soon as the CA issues from another intermediate (Let's
    Encrypt replaced all of its intermediates in 2026, and picks among several).
    """
    warnings = []
    for name, found in records.items():
        for record in found:
            if record.is_spki_sha256(USAGE_DANE_TA) and record.data not in chain_digests:
                warnings.append(
                    f"{name} has a TLSA 2 1 1 record ({record.data[:16]}...) pinning a CA "
                    "that is not in the current certificate's chain: DANE senders refuse "
                    "the server unless another record matches. Replace it with 3 1 1 "
                    "records of the current and next keys (virtualhosts tlsa HOST)."
                )
    return warnings

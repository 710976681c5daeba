"""A mail host's keys and TLSA records: the key an order uses, the next key waiting beside
it, the records to publish and what DNS publishes (docs/mail.md).

The pipeline calls ``order_key`` before a mail host's order and ``check_after_run`` once the
served certificate is verified; the API and the CLI call ``report``. Which key to use is
``key_rollover``'s pure policy; this module gathers its inputs (files, DNS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.utils import timezone

from . import alarms, key_rollover, recording
from .adapters import storage, tlsa, x509
from .adapters.tlsa import TlsaRecord
from .context import Settings
from .errors import StorageError, TlsaLookupFailed, VirtualHostError
from .key_rollover import KeyChoice
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")


def applies(s: Settings, host: VirtualHost) -> bool:
    """Whether the host's key is kept across renewals (a mail host, the setting on)."""
    return host.serves_mail and s.mail_keep_key


# -- before an order ----------------------------------------------------------------


@dataclass(frozen=True)
class OrderKey:
    """The key an order's CSR is signed with, and why (never logged: ``pem`` is secret)."""

    pem: bytes = field(repr=False)
    choice: KeyChoice


def lookup_all(
    hostname: str, ports: tuple[int, ...], resolver_spec: str | None
) -> tuple[dict[str, list[TlsaRecord]], str]:
    """The TLSA records at each port's name, and why a lookup failed ("" if none did)."""
    found: dict[str, list[TlsaRecord]] = {}
    for port in ports:
        name = tlsa.record_name(port, hostname)
        try:
            found[name] = tlsa.lookup(name, resolver_spec)
        except TlsaLookupFailed as err:
            return found, err.message
    return found, ""


def ensure_next_key(s: Settings, hostname: str, current: bytes | None) -> bytes | None:
    """The host's next key; made (and stored, 0600) when missing, unusable, the current key
    itself (it rotated in: the run that stored it may have died before making a new one), or
    of another type than ACME_KEY_TYPE (changed: the next rotation brings the new type).
    None when it cannot be stored: the caller keeps the current key."""
    next_pem = storage.read_next_key(s.storage_root, hostname)
    if (
        next_pem is not None
        and x509.key_type(x509.load_private_key(next_pem)) == s.key_type
        and not (current is not None and tlsa.key_digest(next_pem) == tlsa.key_digest(current))
    ):
        return next_pem
    next_pem = x509.generate_private_key(s.key_type)
    try:
        storage.write_next_key(s.storage_root, hostname, next_pem)
    except StorageError as err:
        logger.warning("virtualhost %s: next key not stored: %s", hostname, err.message)
        return None
    logger.info(
        "virtualhost %s: next key made (TLSA 3 1 1 %s)", hostname, tlsa.key_digest(next_pem)
    )
    return next_pem


def order_key(s: Settings, host: VirtualHost, stored: storage.StoredCertificate) -> OrderKey:
    """The key of a mail host's next order (``key_rollover.choose_key``)."""
    if not applies(s, host):  # a fresh key, and no next key to keep
        choice = key_rollover.choose_key(
            serves_mail=host.serves_mail,
            keep_key=s.mail_keep_key,
            has_current=False,
            has_next=False,
            forced=False,
            next_key=key_rollover.Publication(False),
        )
        return OrderKey(x509.generate_private_key(s.key_type), choice)
    current = None
    if stored.facts is not None:  # a usable pair: never an exposed or mismatched key
        current = storage.read_current_key(s.storage_root, host.hostname)
    next_pem = ensure_next_key(s, host.hostname, current)
    forced = host.key_rotation_requested_at is not None
    publication = key_rollover.Publication(False)
    if next_pem is not None and not forced:
        records, problem = lookup_all(host.hostname, s.tlsa_ports, s.preflight_resolver)
        publication = key_rollover.publication(tlsa.key_digest(next_pem), records, problem)
    choice = key_rollover.choose_key(
        serves_mail=host.serves_mail,
        keep_key=s.mail_keep_key,
        has_current=current is not None,
        has_next=next_pem is not None,
        forced=forced,
        next_key=publication,
    )
    if choice.action == key_rollover.KEEP and current is not None:
        return OrderKey(current, choice)
    if choice.action == key_rollover.ROTATE and next_pem is not None:
        return OrderKey(next_pem, choice)
    return OrderKey(x509.generate_private_key(s.key_type), choice)


# -- after a run ----------------------------------------------------------------------


def _chain_digests(fullchain: bytes | None) -> list[str]:
    """The ``2 1 1`` digests of the chain's CA certificates (the leaf excluded)."""
    if fullchain is None:
        return []
    return [tlsa.certificate_digest(cert) for cert in x509.load_chain(fullchain)[1:]]


def check_after_run(s: Settings, host: VirtualHost) -> str:
    """Once a mail host's certificate is served: make its next key if needed (it just
    rotated in), record its digests, compare them with DNS; warn (alarm) about ``2 1 1``
    records pinning a CA not in the chain. Returns the history message; never raises for
    DNS or storage trouble (the deploy is done, and fine)."""
    try:
        ports = s.tlsa_ports
        current = storage.read_current_key(s.storage_root, host.hostname)
        chain = _chain_digests(storage.read_fullchain(s.storage_root, host.hostname))
        next_pem = ensure_next_key(s, host.hostname, current) if applies(s, host) else None
    except VirtualHostError as err:
        return f"TLSA records not checked: {err.message}"
    keys: dict[str, object] = {"chain": chain}
    if current is not None:
        keys["current"] = tlsa.key_digest(current)
    if next_pem is not None:
        keys["next"] = tlsa.key_digest(next_pem)
    # A forced rotation is done once another key is served; not at the store step: a pair
    # rolled back (nginx refused it) puts the old key back, and the retry rotates again.
    rotated = keys.get("current") != (host.tlsa_keys or {}).get("current")
    if host.key_rotation_requested_at is not None and rotated and current is not None:
        recording.fulfil_key_rotation(host, timezone.now())
    recording.record_tlsa_keys(host, keys)
    found = report(host, ports, s.preflight_resolver)
    if found.warnings:
        if alarms.open_tlsa_alarm(host, f"Virtual host {host.hostname}: {found.warnings[0]}"):
            logger.warning("virtualhost %s: %s", host.hostname, found.warnings[0])
    elif not found.problem:
        alarms.close_tlsa_alarm(host)
    return found.summary()


# -- what to publish, and what is published (API, CLI) ----------------------------------


@dataclass(frozen=True)
class Row:
    """One record the host should publish: at ``name``, for its ``role`` key."""

    name: str
    role: str  # key_rollover.ROLE_CURRENT or ROLE_NEXT
    record: TlsaRecord
    published: bool | None  # None: DNS could not say

    @property
    def zone_line(self) -> str:
        return tlsa.zone_line(self.name, self.record)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "record": self.record.text,
            "published": self.published,
            "zone_line": self.zone_line,
        }


@dataclass(frozen=True)
class Report:
    hostname: str
    rows: list[Row]
    warnings: list[str]
    problem: str  # a DNS lookup failed ("" if none did)
    rotation_requested: bool
    published_elsewhere: list[str]  # other TLSA records found, "name record"

    def summary(self) -> str:
        if not self.rows:
            return "no key recorded yet: the next run records the TLSA records to publish"
        parts = [
            f"{row.role} key {row.record.data[:12]}... "
            + {True: "published", False: "NOT published", None: "unknown"}[row.published]
            + f" at {row.name}"
            for row in self.rows
        ]
        text = "TLSA 3 1 1: " + "; ".join(parts)
        if self.problem:
            text += f". {self.problem}"
        for warning in self.warnings:
            text += f". Warning: {warning}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "records": [row.as_dict() for row in self.rows],
            "warnings": self.warnings,
            "dns_problem": self.problem,
            "rotation_requested": self.rotation_requested,
            "other_records": self.published_elsewhere,
        }


def report(host: VirtualHost, ports: tuple[int, ...], resolver_spec: str | None) -> Report:
    """The ``3 1 1`` records of the host's current and next keys (as its last run recorded
    them) at each port's TLSA name, whether DNS publishes them (asking ``resolver_spec``,
    the pre-flight's), and warnings about published ``2 1 1`` records."""
    keys = host.tlsa_keys or {}
    digests = [
        (role, str(keys[role]))
        for role in (key_rollover.ROLE_CURRENT, key_rollover.ROLE_NEXT)
        if keys.get(role)
    ]
    if not keys:  # a web host, or a mail host before its first run: nothing to compare
        return Report(host.hostname, [], [], "", host.key_rotation_requested_at is not None, [])
    found, problem = lookup_all(host.hostname, ports, resolver_spec)
    rows = []
    for port in ports:
        name = tlsa.record_name(port, host.hostname)
        records = found.get(name)
        for role, digest in digests:
            record = tlsa.end_entity(digest)
            published = None if records is None else record in records
            rows.append(Row(name, role, record, published))
    ours = {row.record for row in rows}
    others = [f"{name} {r.text}" for name, recs in found.items() for r in recs if r not in ours]
    chain = keys.get("chain") or []
    warnings = key_rollover.foreign_ca_pins(found, list(chain)) if isinstance(chain, list) else []
    return Report(
        host.hostname,
        rows,
        warnings,
        problem,
        host.key_rotation_requested_at is not None,
        others,
    )

"""DANE-safe key rollover without the chain: the pure policy, the TLSA adapter against the
test DNS stub, and the next key on disk."""

from __future__ import annotations

import datetime
import stat

import pytest

from modoboa_pro.testing import DnsResponder, make_chain_pem, validity
from modoboa_pro.virtualhosts import key_rollover
from modoboa_pro.virtualhosts.adapters import storage, tlsa, x509
from modoboa_pro.virtualhosts.adapters.tlsa import TlsaRecord
from modoboa_pro.virtualhosts.errors import TlsaLookupFailed
from modoboa_pro.virtualhosts.key_rollover import FRESH, KEEP, ROTATE, Publication

pytestmark = pytest.mark.dane

NAME = "_25._tcp.mail.example.test"
NEXT = "ab" * 32
DAY = datetime.timedelta(days=1)
OTHER = "cd" * 32


def choose(**overrides: object) -> key_rollover.KeyChoice:
    values: dict[str, object] = {
        "serves_mail": True,
        "keep_key": True,
        "has_current": True,
        "has_next": True,
        "forced": False,
        "next_key": Publication(False, (NAME,)),
    }
    values.update(overrides)
    return key_rollover.choose_key(**values)  # type: ignore[arg-type]


def pair(hostname: str) -> tuple[bytes, bytes]:
    not_before, not_after = validity(lifetime=90 * DAY, remaining=60 * DAY)
    return make_chain_pem([hostname], not_before=not_before, not_after=not_after)


def test_web_hosts_and_the_setting_off_get_a_fresh_key():
    assert choose(serves_mail=False).action == FRESH
    assert choose(keep_key=False, forced=True, next_key=Publication(True)).action == FRESH
    assert "VIRTUALHOSTS_MAIL_KEEP_KEY" in choose(keep_key=False).reason


def test_a_mail_host_keeps_its_key_until_the_next_one_is_published():
    kept = choose()
    assert kept.action == KEEP
    assert f"not published at {NAME}" in kept.reason
    assert choose(next_key=Publication(True)).action == ROTATE


def test_a_dns_failure_keeps_the_current_key_and_says_so():
    kept = choose(next_key=Publication(None, problem="TLSA lookup of x failed (SERVFAIL)"))
    assert kept.action == KEEP
    assert "SERVFAIL" in kept.reason and "never blocks a renewal" in kept.reason


def test_forcing_rotates_whatever_dns_says():
    assert choose(forced=True, next_key=Publication(None, problem="timeout")).action == ROTATE
    assert choose(forced=True).reason.endswith("(rotate-key)")


def test_without_a_usable_key_on_disk():
    # A first certificate, or an exposed key: never reused; the published next key if any.
    assert choose(has_current=False).action == FRESH
    assert choose(has_current=False, next_key=Publication(True)).action == ROTATE
    assert choose(has_current=False, next_key=Publication(None, problem="x")).action == FRESH
    # The next key could not be stored: keep what DNS may pin.
    assert choose(has_next=False, forced=True).action == KEEP
    assert choose(has_next=False, has_current=False).action == FRESH


def test_publication_needs_the_record_at_every_name():
    ours = tlsa.end_entity(NEXT)
    submission = "_587._tcp.mail.example.test"
    assert key_rollover.publication(NEXT, {NAME: [ours]}) == Publication(True, ())
    assert key_rollover.publication(NEXT, {NAME: [ours], submission: []}) == Publication(
        False, (submission,)
    )
    # The same digest in a 2 1 1 or 3 0 1 record is not the key's 3 1 1 record.
    other_kinds = [TlsaRecord(2, 1, 1, NEXT), TlsaRecord(3, 0, 1, NEXT)]
    assert not key_rollover.publication(NEXT, {NAME: other_kinds}).published
    assert key_rollover.publication(NEXT, {}).published is False
    unknown = key_rollover.publication(NEXT, {NAME: [ours]}, problem="timeout")
    assert unknown.published is None and unknown.problem == "timeout"


def test_a_2_1_1_record_outside_the_chain_is_warned_about():
    records = {NAME: [TlsaRecord(2, 1, 1, OTHER), TlsaRecord(3, 1, 1, NEXT)]}
    assert key_rollover.foreign_ca_pins(records, [OTHER]) == []
    [warning] = key_rollover.foreign_ca_pins(records, [NEXT])
    assert warning.startswith(f"{NAME} has a TLSA 2 1 1 record ({OTHER[:16]}")


def test_digests_are_the_spki_sha256_of_key_and_certificate():
    fullchain, key = pair("mail.example.test")
    leaf = x509.load_chain(fullchain)[0]
    assert tlsa.key_digest(key) == tlsa.certificate_digest(leaf)
    assert len(tlsa.key_digest(key)) == 64
    record = tlsa.end_entity(tlsa.key_digest(key))
    assert tlsa.zone_line(NAME, record) == f"{NAME}. IN TLSA 3 1 1 {tlsa.key_digest(key)}"


@pytest.fixture(scope="module")
def stub():
    with DnsResponder() as responder:
        yield responder


def test_lookup_reads_what_the_dns_stub_publishes(stub: DnsResponder):
    stub.tlsa[NAME] = [(3, 1, 1, NEXT), (2, 1, 1, OTHER)]
    try:
        assert tlsa.lookup(NAME, stub.address) == [
            TlsaRecord(3, 1, 1, NEXT),
            TlsaRecord(2, 1, 1, OTHER),
        ]
        assert tlsa.lookup("_25._tcp.nothing.example.test", stub.address) == []
        # A and AAAA answers are as before.
        from modoboa_pro.virtualhosts.adapters import preflight

        assert preflight.resolve("mail.example.test", stub.address) == ["127.0.0.1"]
        stub.nxdomain.add(NAME)
        assert tlsa.lookup(NAME, stub.address) == []
    finally:
        stub.tlsa.clear()
        stub.nxdomain.clear()


def test_a_silent_resolver_fails_the_lookup_with_a_reason(stub: DnsResponder, monkeypatch):
    from modoboa_pro.virtualhosts.adapters import preflight

    monkeypatch.setattr(preflight, "RESOLVER_TIMEOUT", 0.2)
    monkeypatch.setattr(preflight, "RESOLVER_LIFETIME", 0.3)
    stub.silent.add(NAME)
    try:
        with pytest.raises(TlsaLookupFailed, match="no answer in time"):
            tlsa.lookup(NAME, stub.address)
    finally:
        stub.silent.clear()


def test_the_next_key_is_private_atomic_and_outlives_pruning(tmp_path):
    host = "mail.example.test"
    assert storage.read_next_key(tmp_path, host) is None
    next_key = x509.generate_private_key()
    path = storage.write_next_key(tmp_path, host, next_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [storage.NEXT_KEY_FILENAME]
    for _ in range(storage.PAIR_VERSIONS_KEEP + 2):  # every write prunes
        storage.write_certificate_pair(tmp_path, host, *pair(host))
    assert storage.read_next_key(tmp_path, host) == next_key
    # Garbage is not a key: the caller makes a new one.
    path.write_bytes(b"not a key")
    assert storage.read_next_key(tmp_path, host) is None
    # Archived with the host, beside its versions.
    storage.write_next_key(tmp_path, host, next_key)
    archive = storage.archive_host(tmp_path, host)
    assert archive is not None
    assert (archive / storage.NEXT_KEY_FILENAME).read_bytes() == next_key
    assert not (archive / "versions" / storage.NEXT_KEY_FILENAME).exists()


def settings_for(root, key_type: str = "ecdsa-p256"):
    from modoboa_pro.virtualhosts.context import Settings

    return Settings(
        letsencrypt=True,
        email="hostmaster@example.test",
        storage_root=root,
        threshold_days=30,
        directory_url="https://ca.invalid/directory",
        ca_bundle=None,
        key_type=key_type,
        order_timeout=10,
        conf_dir=root / "sites",
        http_port=80,
        https_port=443,
        listen_address="",
        upstream="http://127.0.0.1:1",
        upstream_protocol="http",
        verify_address="127.0.0.1",
    )


def test_a_new_next_key_once_it_rotated_in_or_the_key_type_changed(tmp_path):
    from modoboa_pro.virtualhosts import dane

    host = "mail.example.test"
    s = settings_for(tmp_path)
    first = dane.ensure_next_key(s, host, current=None)
    assert first is not None and dane.ensure_next_key(s, host, current=None) == first
    # The next key became the current one (a run died before making another): replaced.
    second = dane.ensure_next_key(s, host, current=first)
    assert second not in (None, first)
    assert storage.read_next_key(tmp_path, host) == second
    # ACME_KEY_TYPE changed: the next rotation brings the new type.
    rsa = dane.ensure_next_key(settings_for(tmp_path, "rsa-2048"), host, current=None)
    assert rsa is not None and x509.key_type(x509.load_private_key(rsa)) == "rsa-2048"


@pytest.mark.parametrize("value", ["25", [], [0], [25, 70000], [True], [25.0], None])
def test_a_malformed_tlsa_ports_setting_is_named(settings, value):
    from modoboa_pro.virtualhosts import conf
    from modoboa_pro.virtualhosts.checks import check_virtualhosts
    from modoboa_pro.virtualhosts.errors import ConfigurationError

    settings.VIRTUALHOSTS_TLSA_PORTS = value
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_TLSA_PORTS is"):
        conf.tlsa_ports()
    assert [m.id for m in check_virtualhosts() if "TLSA_PORTS" in m.msg] == ["virtualhosts.E014"]
    settings.VIRTUALHOSTS_TLSA_PORTS = [25, 465]
    assert conf.tlsa_ports() == (25, 465)
    assert not [m for m in check_virtualhosts() if m.id == "virtualhosts.E014"]

"""The scan's pair reader: the same verdict as ``storage.read_current`` for every pair, and
the content checks skipped only while the files are the ones that passed them."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts.adapters import pair_reader, storage, x509
from modoboa_pro.virtualhosts.models import VirtualHost

from ..chain.test_garbage_pairs import HOST, VARIANTS, Variant, key_mismatch, truncate_chain

DAY = datetime.timedelta(days=1)
# Longer than a clock tick of file times (10 ms at most): a write after this pause changes
# them, so a short settle time stands for the real one without a two-second wait.
TICK = 0.05


@pytest.fixture
def short_settle(monkeypatch):
    monkeypatch.setattr(pair_reader, "STAMP_SETTLE_NS", int(TICK * 1e9) // 2)


def store(root: Path, hostname: str = HOST) -> None:
    not_before, not_after = validity(remaining=60 * DAY)
    storage.write_certificate_pair(
        root, hostname, *make_chain_pem([hostname], not_before=not_before, not_after=not_after)
    )


def read(root: Path, stamp: str = "", **kwargs) -> tuple[storage.StoredCertificate, dict]:
    with pair_reader.PairReader(root) as reader:
        found = reader.read(HOST, verified_stamp=stamp, **kwargs)
    return found, {"full": reader.full_checks, "skipped": reader.skipped_checks}


def stored_and_stamped(root: Path) -> str:
    """A pair stored, settled, and read once: the stamp a scan records."""
    store(root)
    time.sleep(TICK)
    found, counts = read(root)
    assert found.problem is None and found.stamp and counts == {"full": 1, "skipped": 0}
    return found.stamp


def test_an_unchanged_pair_is_not_checked_again(tmp_path, short_settle, monkeypatch):
    stamp = stored_and_stamped(tmp_path)
    checked = []
    for name in ("check_order", "load_private_key", "check_key_matches"):
        real = getattr(x509, name)
        monkeypatch.setattr(x509, name, lambda *a, _n=name, _f=real: checked.append(_n) or _f(*a))
    again, counts = read(tmp_path, stamp)
    assert counts == {"full": 0, "skipped": 1} and checked == []
    assert again.problem is None and again.stamp == stamp
    assert again.facts == storage.read_current(tmp_path, HOST).facts
    # Another stamp (another pair, or none recorded): every check again.
    checked.clear()
    _, counts = read(tmp_path, "1:other")
    assert counts == {"full": 1, "skipped": 0}
    assert checked == ["load_private_key", "check_order", "check_key_matches"]


def test_a_pair_written_moments_ago_gets_no_stamp(tmp_path):
    """Its files may be rewritten within the same tick of the clock without a new time."""
    store(tmp_path)
    found, _ = read(tmp_path)
    assert found.problem is None and found.facts is not None and found.stamp == ""


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_damage_after_a_stamp_is_found_as_read_current_finds_it(
    tmp_path, short_settle, variant: Variant
):
    root = tmp_path / "acme"
    stamp = stored_and_stamped(root)
    time.sleep(TICK)
    variant.damage(root, HOST)
    expected = storage.read_current(root, HOST, issued_serial="abc")
    found, counts = read(root, stamp, issued_serial="abc")
    assert counts == {"full": 1, "skipped": 0}
    assert (found.facts, found.problem) == (expected.facts, expected.problem)
    if variant.id != "expired":  # the policy's business, not the files'
        assert found.problem is not None and found.stamp == ""


def test_a_key_replaced_by_one_of_the_same_size_in_place(tmp_path, short_settle):
    stamp = stored_and_stamped(tmp_path)
    key = storage.certificate_paths(tmp_path, HOST)[1]
    before = key.stat()
    time.sleep(TICK)
    key_mismatch(tmp_path, HOST)
    after = key.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    found, counts = read(tmp_path, stamp)
    assert counts["full"] == 1
    assert "does not match the certificate" in (found.problem or "")


def test_a_truncated_chain_after_a_stamp(tmp_path, short_settle):
    stamp = stored_and_stamped(tmp_path)
    time.sleep(TICK)
    truncate_chain(tmp_path, HOST)
    found, _ = read(tmp_path, stamp)
    assert "truncated" in (found.problem or "") and "certificate 2" in (found.problem or "")


def test_the_key_mode_is_checked_whatever_the_stamp(tmp_path, short_settle):
    """A chmod also changes the change time; the mode is checked before the stamp anyway."""
    stamp = stored_and_stamped(tmp_path)
    key = storage.certificate_paths(tmp_path, HOST)[1]
    key.chmod(0o640)
    found, _ = read(tmp_path, stamp)
    assert "mode 0640" in (found.problem or "") and "chmod 600" in (found.problem or "")
    repaired, _ = read(tmp_path, stamp, repair=True)
    assert "its mode is now 0600" in (repaired.problem or "")
    assert key.stat().st_mode & 0o777 == 0o600
    # The marker keeps saying so on every read, stamp or not, until a new pair replaces it.
    time.sleep(TICK)
    again, _ = read(tmp_path, stamp)
    assert "its mode is now 0600" in (again.problem or "")


def test_a_rollback_to_an_older_version_is_checked(tmp_path, short_settle):
    store(tmp_path)
    stamp = stored_and_stamped(tmp_path)  # a second version, current
    storage.rollback_pair(tmp_path, HOST)
    found, counts = read(tmp_path, stamp)
    assert found.problem is None and counts == {"full": 1, "skipped": 0}
    assert found.stamp not in ("", stamp)


def test_without_any_pair(tmp_path):
    found, counts = read(tmp_path)
    assert found == storage.StoredCertificate(None) and counts == {"full": 1, "skipped": 0}
    os.makedirs(tmp_path / "certs" / ".pairs")
    found, _ = read(tmp_path, issued_serial="abc")
    assert "is missing although a certificate was issued" in (found.problem or "")


def test_certs_is_resolved_once_for_many_hosts(tmp_path, monkeypatch):
    """No path resolved per host (``read_current`` resolves two per file, 51 ``lstat`` a host)."""
    names = [f"h{i}.example.test" for i in range(3)]
    for name in names:
        store(tmp_path, name)
    resolved = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda *a, **k: resolved.append(a) or real(*a, **k))
    with pair_reader.PairReader(tmp_path) as reader:
        found = [reader.read(name) for name in names]
    assert all(f.problem is None and f.facts is not None for f in found)
    assert len(resolved) == 1 and reader.full_checks == 3
    storage.read_current(tmp_path, names[0])
    assert len(resolved) == 1 + 3  # read_current resolves certs/ and its files for one host


def recorded(root: Path) -> tuple[str, datetime.datetime, datetime.datetime]:
    """The leaf's facts as the scan records them on the host's row."""
    facts = storage.read_current(root, HOST).facts
    assert facts is not None
    return facts.serial, facts.not_before, facts.not_after


def unchanged(root: Path, stamp: str, facts: tuple) -> tuple[bool, dict]:
    with pair_reader.PairReader(root) as reader:
        found = reader.unchanged(HOST, stamp, facts)
    return found, {"full": reader.full_checks, "skipped": reader.skipped_checks}


@pytest.fixture
def pair_file_reads(monkeypatch) -> dict[str, int]:
    """Opens of a pair's files and parses of a certificate, counted."""
    counts = {"opened": 0, "parsed": 0}
    files = {"fullchain.pem", "privkey.pem"}
    real_open = os.open

    def counting_open(path, *args, **kwargs):  # noqa: ANN001, ANN202
        counts["opened"] += os.path.basename(os.fspath(path)) in files
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for name in ("load_leaf", "load_chain"):  # the stamp path's parse, the full path's
        real = getattr(x509, name)
        monkeypatch.setattr(
            x509,
            name,
            lambda *a, _f=real: counts.__setitem__("parsed", counts["parsed"] + 1) or _f(*a),
        )
    return counts


def test_an_unchanged_pair_with_its_recorded_facts_is_neither_opened_nor_parsed(
    tmp_path, short_settle, pair_file_reads
):
    stamp = stored_and_stamped(tmp_path)
    facts = recorded(tmp_path)
    pair_file_reads.update(opened=0, parsed=0)
    assert unchanged(tmp_path, stamp, facts) == (True, {"full": 0, "skipped": 1})
    assert pair_file_reads == {"opened": 0, "parsed": 0}
    # The stamp tells whether the leaf's ARI id is the one the row's ARI answer is about.
    leaf = storage.read_current(tmp_path, HOST).facts
    assert leaf is not None and leaf.ari_id  # the test chain's leaf names its issuer's key
    assert pair_reader.stamped_ari(stamp) == pair_reader.ari_digest(leaf.ari_id) != ""
    assert pair_reader.ari_digest("") == "" != pair_reader.ari_digest(leaf.ari_id + "x")
    assert len(stamp) <= VirtualHost._meta.get_field("pair_stamp").max_length
    # Facts on the row that are not the leaf's: no shortcut (the full read records them).
    serial, not_before, not_after = facts
    for other in (
        ("ab" + serial, not_before, not_after),
        (serial, not_before, not_after + DAY),
        (serial, not_before - DAY, not_after),
    ):
        assert unchanged(tmp_path, stamp, other) == (False, {"full": 0, "skipped": 0})
    # No stamp, another stamp, a stamp of the previous format.
    for other_stamp in ("", "1:other", stamp.replace("3:", "2:", 1)):
        assert unchanged(tmp_path, other_stamp, facts)[0] is False
    # A read with that stamp still returns the leaf's facts, and the same stamp.
    again, counts = read(tmp_path, stamp)
    assert again.stamp == stamp and counts == {"full": 0, "skipped": 1}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_no_damage_passes_for_unchanged(tmp_path, short_settle, variant: Variant):
    """Every damaged pair of the garbage-pair tests, done after the stamp was recorded,
    sends the scan to the full read (which reports it, see above)."""
    root = tmp_path / "acme"
    stamp = stored_and_stamped(root)
    facts = recorded(root)
    time.sleep(TICK)
    variant.damage(root, HOST)
    assert unchanged(root, stamp, facts) == (False, {"full": 0, "skipped": 0})


def test_the_key_mode_and_the_exposure_marker_are_checked_by_unchanged(tmp_path, short_settle):
    stamp = stored_and_stamped(tmp_path)
    facts = recorded(tmp_path)
    key = storage.certificate_paths(tmp_path, HOST)[1]
    key.chmod(0o640)
    assert unchanged(tmp_path, stamp, facts)[0] is False
    storage.read_current(tmp_path, HOST, repair=True)  # made private, the marker left
    assert key.stat().st_mode & 0o777 == 0o600
    assert unchanged(tmp_path, stamp, facts)[0] is False
    assert "its mode is now 0600" in (read(tmp_path, stamp)[0].problem or "")



def test_the_product_never_writes_the_exposure_marker_alone(tmp_path, short_settle):
    """``unchanged`` does not look for the marker: what writes it also makes the key
    private, and that chmod moves the key's change time, which the stamp holds."""
    stamp = stored_and_stamped(tmp_path)
    facts = recorded(tmp_path)
    key = storage.certificate_paths(tmp_path, HOST)[1]
    key.chmod(0o644)
    exposed = key.stat()
    time.sleep(TICK)
    found = storage.read_current(tmp_path, HOST, repair=True)
    assert "its mode is now 0600" in (found.problem or "")
    assert (key.parent / storage.EXPOSED_MARKER).exists()
    assert key.stat().st_ctime_ns != exposed.st_ctime_ns  # the repair's chmod
    assert unchanged(tmp_path, stamp, facts) == (False, {"full": 0, "skipped": 0})

"""Tests for the storage adapter: certificate pairs, rollback, archive, current certificate."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts.adapters import storage, x509
from modoboa_pro.virtualhosts.errors import InvalidHostname, StorageError

from .helpers import HOST, UNSAFE_HOSTNAMES, make_pair, mode

# -- hostnames ----------------------------------------------------------------


@pytest.mark.parametrize("hostname", UNSAFE_HOSTNAMES)
def test_unsafe_hostnames_never_reach_a_path(tmp_path, hostname):
    fullchain, key = make_pair()
    calls = [
        lambda: storage.certificate_paths(tmp_path, hostname),
        lambda: storage.read_fullchain(tmp_path, hostname),
        lambda: storage.read_current(tmp_path, hostname, issued_serial="abc"),
        lambda: storage.write_certificate_pair(tmp_path, hostname, fullchain, key),
        lambda: storage.previous_pair(tmp_path, hostname),
        lambda: storage.rollback_pair(tmp_path, hostname),
        lambda: storage.archive_host(tmp_path, hostname),
    ]
    for call in calls:
        with pytest.raises(InvalidHostname):
            call()
    assert list(tmp_path.iterdir()) == []


# -- certificate pairs --------------------------------------------------------


def test_write_pair_layout_and_modes(tmp_path):
    fullchain, key = make_pair()
    version = storage.write_certificate_pair(tmp_path, HOST, fullchain, key)

    link = tmp_path / "certs" / HOST
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))  # survives moving the storage root
    assert link.resolve() == version.resolve()
    assert version.parent == tmp_path / "certs" / ".pairs" / HOST
    fullchain_path, privkey_path = storage.certificate_paths(tmp_path, HOST)
    assert fullchain_path == link / "fullchain.pem"
    assert privkey_path == link / "privkey.pem"
    assert fullchain_path.read_bytes() == fullchain
    assert privkey_path.read_bytes() == key
    assert mode(privkey_path) == 0o600
    assert mode(fullchain_path) == 0o644
    for directory in (tmp_path / "certs", tmp_path / "certs" / ".pairs", version.parent, version):
        assert mode(directory) == 0o700
    assert storage.read_fullchain(tmp_path, HOST) == fullchain


def test_read_fullchain_absent(tmp_path):
    assert storage.read_fullchain(tmp_path, HOST) is None


def test_second_write_swaps_pair_and_keeps_previous(tmp_path):
    first = make_pair()
    second = make_pair()
    v1 = storage.write_certificate_pair(tmp_path, HOST, *first)
    assert storage.previous_pair(tmp_path, HOST) is None
    v2 = storage.write_certificate_pair(tmp_path, HOST, *second)
    assert v1 != v2
    fullchain_path, privkey_path = storage.certificate_paths(tmp_path, HOST)
    assert (fullchain_path.read_bytes(), privkey_path.read_bytes()) == second
    assert storage.previous_pair(tmp_path, HOST) == v1

    assert storage.rollback_pair(tmp_path, HOST) == v1
    assert (fullchain_path.read_bytes(), privkey_path.read_bytes()) == first
    assert not v2.exists()  # the abandoned pair can never be a rollback target
    assert storage.previous_pair(tmp_path, HOST) is None
    with pytest.raises(StorageError, match="no previous certificate"):
        storage.rollback_pair(tmp_path, HOST)


def test_write_after_rollback_rolls_back_to_the_restored_pair(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    good = storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert storage.rollback_pair(tmp_path, HOST) == good
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert storage.previous_pair(tmp_path, HOST) == good


def test_prunes_to_three_versions(tmp_path):
    versions = [storage.write_certificate_pair(tmp_path, HOST, *make_pair()) for _ in range(5)]
    kept = sorted(p.name for p in (tmp_path / "certs" / ".pairs" / HOST).iterdir())
    assert kept == [v.name for v in versions[-3:]]


def test_mismatched_key_changes_nothing(tmp_path):
    good = make_pair()
    storage.write_certificate_pair(tmp_path, HOST, *good)
    before = sorted(p.name for p in (tmp_path / "certs" / ".pairs" / HOST).iterdir())
    other_key = x509.generate_private_key()
    with pytest.raises(StorageError, match="does not match"):
        storage.write_certificate_pair(tmp_path, HOST, good[0], other_key)
    after = sorted(p.name for p in (tmp_path / "certs" / ".pairs" / HOST).iterdir())
    assert before == after
    assert storage.read_fullchain(tmp_path, HOST) == good[0]


def test_mismatched_key_on_first_write_creates_nothing(tmp_path):
    fullchain, _ = make_pair()
    with pytest.raises(StorageError):
        storage.write_certificate_pair(tmp_path, HOST, fullchain, x509.generate_private_key())
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_keeps_current_pair(tmp_path, monkeypatch):
    good = make_pair()
    storage.write_certificate_pair(tmp_path, HOST, *good)
    real = storage.atomic_write

    def failing(path, data, file_mode):
        if Path(path).name == "fullchain.pem":
            raise StorageError("disk full")
        real(path, data, file_mode)

    monkeypatch.setattr(storage, "atomic_write", failing)
    with pytest.raises(StorageError, match="disk full"):
        storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    fullchain_path, privkey_path = storage.certificate_paths(tmp_path, HOST)
    assert (fullchain_path.read_bytes(), privkey_path.read_bytes()) == good
    assert len(list((tmp_path / "certs" / ".pairs" / HOST).iterdir())) == 1
    assert not [p for p in (tmp_path / "certs").iterdir() if p.name.endswith(".link")]


def test_a_version_left_half_written_is_never_restored_and_is_pruned(tmp_path):
    """A writer SIGKILLed between the key and the chain runs no cleanup: its version holds a
    key alone. A rollback must never point nginx at it; the next write removes it."""
    good = storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    half = good.parent / f"000002{good.name[6:]}"
    half.mkdir(mode=0o700)
    (half / "privkey.pem").write_bytes(x509.generate_private_key())
    current = storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert current.name > half.name
    assert storage.previous_pair(tmp_path, HOST) == good
    assert not half.exists()
    assert storage.rollback_pair(tmp_path, HOST) == good


def test_a_temporary_link_left_by_a_killed_swap_is_removed_by_the_next_write(tmp_path):
    """A writer SIGKILLed between symlink() and rename() leaves its hidden link in certs/."""
    first = storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    certs = tmp_path / "certs"
    stale = certs / f".{HOST}.0123456789ab{storage.LINK_TEMP_SUFFIX}"
    os.symlink(os.path.relpath(first, certs), stale)
    # Another host's, whose name starts with ours: not ours to remove.
    other = certs / f".{HOST}.example.0123456789ab{storage.LINK_TEMP_SUFFIX}"
    os.symlink(os.path.relpath(first, certs), other)
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert not stale.is_symlink()
    assert other.is_symlink()


def test_reader_resolving_once_never_sees_a_mixed_pair(tmp_path):
    pairs = [make_pair() for _ in range(3)]
    storage.write_certificate_pair(tmp_path, HOST, *pairs[0])
    link = tmp_path / "certs" / HOST
    stop = threading.Event()
    mismatches: list[tuple[bytes, bytes]] = []
    reads = 0

    def reader():
        nonlocal reads
        while not stop.is_set():
            directory = Path(os.path.realpath(link))
            try:
                got = (
                    (directory / "fullchain.pem").read_bytes(),
                    (directory / "privkey.pem").read_bytes(),
                )
            except FileNotFoundError:
                continue  # a version pruned between realpath and open: never served
            reads += 1
            if got not in pairs:
                mismatches.append(got)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            storage.write_certificate_pair(tmp_path, HOST, *pairs[i % 3])
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert mismatches == []


def test_archive_host_moves_everything(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    latest = make_pair()
    storage.write_certificate_pair(tmp_path, HOST, *latest)

    archive = storage.archive_host(tmp_path, HOST)
    assert archive is not None
    assert archive.parent == tmp_path / "archive"
    assert archive.name.startswith(f"{HOST}-")
    assert not (tmp_path / "certs" / HOST).exists()
    assert not (tmp_path / "certs" / HOST).is_symlink()
    assert not (tmp_path / "certs" / ".pairs" / HOST).exists()
    assert len(list((archive / "versions").iterdir())) == 2
    assert (archive / "current" / "fullchain.pem").read_bytes() == latest[0]
    assert storage.read_fullchain(tmp_path, HOST) is None

    # A second archive of the same host in the same second does not collide.
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert storage.archive_host(tmp_path, HOST) != archive


def test_archives_made_in_the_same_second_are_numbered_up_to_a_bound(tmp_path, monkeypatch):
    """The counter is bounded so that hostnames.py knows the longest archive name."""
    monkeypatch.setattr(storage, "ARCHIVE_COUNTER_MAX", 2)
    monkeypatch.setattr(storage, "utc_stamp", lambda: "20260102T030405Z")
    names = []
    for _ in range(3):
        storage.write_certificate_pair(tmp_path, HOST, *make_pair())
        archive = storage.archive_host(tmp_path, HOST)
        assert archive is not None
        names.append(archive.name)
    stamp = f"{HOST}-20260102T030405Z"
    assert names == [stamp, f"{stamp}-1", f"{stamp}-2"]
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    with pytest.raises(StorageError, match="3 archives of it were made in the same second") as info:
        storage.archive_host(tmp_path, HOST)
    assert info.value.retryable
    assert storage.read_fullchain(tmp_path, HOST) is not None  # nothing was moved


def test_hostname_file_names_are_the_link_its_temporary_name_and_the_archive():
    link, temp, archive = storage.hostname_file_names(HOST)
    assert link == HOST
    assert temp.startswith(f".{HOST}.") and temp.endswith(storage.LINK_TEMP_SUFFIX)
    assert archive.startswith(f"{HOST}-") and archive.endswith(f"-{storage.ARCHIVE_COUNTER_MAX}")


def test_archive_host_without_material(tmp_path):
    assert storage.archive_host(tmp_path, HOST) is None
    assert not (tmp_path / "archive").exists()


# -- read_current ---------------------------------------------------------------


def test_read_current_nothing_stored_nothing_issued(tmp_path):
    assert storage.read_current(tmp_path, HOST) == storage.StoredCertificate(None, None)
    assert storage.read_current(tmp_path, HOST, issued_serial="") == storage.StoredCertificate(
        None, None
    )
    assert list(tmp_path.iterdir()) == []  # reading creates nothing


def test_read_current_valid_pair(tmp_path):
    fullchain, key = make_pair(serial=0xABC123)
    storage.write_certificate_pair(tmp_path, HOST, fullchain, key)
    current = storage.read_current(tmp_path, HOST, issued_serial="abc123")
    assert current.problem is None
    assert current.facts is not None
    assert current.facts.serial == "abc123"
    assert current.facts == x509.parse_leaf(fullchain)
    # Without a recorded serial the file is read all the same.
    assert storage.read_current(tmp_path, HOST).facts == current.facts


def _remove_fullchain(tmp_path: Path) -> None:
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    storage.certificate_paths(tmp_path, HOST)[0].resolve().unlink()


@pytest.mark.parametrize(
    "setup",
    [lambda root: None, _remove_fullchain],
    ids=["nothing-on-disk", "fullchain-deleted"],
)
def test_read_current_missing_although_issued(tmp_path, setup):
    setup(tmp_path)
    current = storage.read_current(tmp_path, HOST, issued_serial="abc")
    assert current.facts is None
    assert current.problem is not None
    assert str(storage.certificate_paths(tmp_path, HOST)[0]) in current.problem
    assert "abc" in current.problem
    assert "missing" in current.problem


def test_read_current_garbage_fullchain(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    fullchain_path = storage.certificate_paths(tmp_path, HOST)[0]
    fullchain_path.resolve().write_bytes(b"this is not a certificate\n")
    for issued in ("", "abc"):
        current = storage.read_current(tmp_path, HOST, issued_serial=issued)
        assert current.facts is None
        assert current.problem is not None
        assert str(fullchain_path) in current.problem
        assert "not a PEM certificate" in current.problem


def test_read_current_unreadable_fullchain(tmp_path):
    # A directory where the file should be: reading fails with an OSError, even as root.
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    fullchain_path = storage.certificate_paths(tmp_path, HOST)[0]
    fullchain_path.resolve().unlink()
    fullchain_path.resolve().mkdir()
    current = storage.read_current(tmp_path, HOST, issued_serial="abc")
    assert current.facts is None
    assert current.problem is not None
    assert str(fullchain_path) in current.problem
    assert "Cannot read" in current.problem


def test_read_current_checks_the_key_too(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    privkey = storage.certificate_paths(tmp_path, HOST)[1]
    privkey.unlink()
    current = storage.read_current(tmp_path, HOST)
    assert current.facts is None
    assert f"{privkey}: the private key is missing" in (current.problem or "")
    privkey.write_bytes(x509.generate_private_key())
    privkey.chmod(0o600)
    current = storage.read_current(tmp_path, HOST)
    assert "does not match the certificate" in (current.problem or "")
    assert str(privkey) in (current.problem or "")


def test_read_current_refuses_a_pair_for_another_name(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair(names=("other.example",)))
    current = storage.read_current(tmp_path, HOST)
    assert current.facts is None
    assert f"does not cover {HOST}: it is for other.example" in (current.problem or "")


@pytest.mark.parametrize("what", ["link", "fullchain", "privkey"])
def test_read_current_does_not_follow_links_out_of_certs(tmp_path, what):
    root = tmp_path / "acme"
    pair = make_pair()
    storage.write_certificate_pair(root, HOST, *pair)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A good pair outside: followed, it would pass every check.
    (elsewhere / "fullchain.pem").write_bytes(pair[0])
    (elsewhere / "privkey.pem").write_bytes(pair[1])
    (elsewhere / "privkey.pem").chmod(0o600)
    fullchain, privkey = storage.certificate_paths(root, HOST)
    if what == "link":
        fullchain.parent.unlink()
        fullchain.parent.symlink_to(elsewhere)
        at_fault = fullchain
    else:
        at_fault = fullchain if what == "fullchain" else privkey
        at_fault.resolve().unlink()
        at_fault.resolve().symlink_to(elsewhere / at_fault.name)
    current = storage.read_current(root, HOST, issued_serial="abc")
    assert current.facts is None
    assert f"{at_fault}: it leads to {elsewhere / at_fault.name}, outside" in (
        current.problem or ""
    )
    assert "was not read" in (current.problem or "")


def test_a_readable_key_is_made_private_and_remembered_until_replaced(tmp_path):
    first = make_pair()
    storage.write_certificate_pair(tmp_path, HOST, *first)
    privkey = storage.certificate_paths(tmp_path, HOST)[1]
    privkey.chmod(0o644)

    dry = storage.read_current(tmp_path, HOST)  # the scan's dry run: reports, changes nothing
    assert f"{privkey} was readable by other users (mode 0644); chmod 600" in (dry.problem or "")
    assert mode(privkey) == 0o644

    fixed = storage.read_current(tmp_path, HOST, repair=True)
    assert mode(privkey) == 0o600
    assert fixed.facts is None
    serial = x509.parse_leaf(first[0]).serial
    assert (fixed.problem or "").startswith(f"private key exposed: {privkey} was readable")
    assert "its mode is now 0600. It may have been copied" in (fixed.problem or "")
    assert f"serial {serial}" in (fixed.problem or "")
    # The mode no longer shows it: the pair is still to be replaced, on every read.
    again = storage.read_current(tmp_path, HOST, repair=True)
    assert again.facts is None and "was readable by other users (mode 0644)" in (
        again.problem or ""
    )
    marker = privkey.parent / storage.EXPOSED_MARKER
    assert mode(marker) == 0o600

    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    assert storage.read_current(tmp_path, HOST).problem is None  # replaced
    storage.rollback_pair(tmp_path, HOST)
    assert "private key exposed" in (storage.read_current(tmp_path, HOST).problem or "")


def test_read_current_refuses_an_oversized_file(tmp_path):
    storage.write_certificate_pair(tmp_path, HOST, *make_pair())
    fullchain = storage.certificate_paths(tmp_path, HOST)[0]
    fullchain.write_bytes(fullchain.read_bytes() + b"\n" * storage.PEM_MAX_BYTES)
    current = storage.read_current(tmp_path, HOST)
    assert "larger than 64 KiB" in (current.problem or "")


def test_write_refuses_a_chain_in_the_wrong_order(tmp_path):
    not_before, not_after = validity()
    fullchain, key = make_chain_pem([HOST], not_before=not_before, not_after=not_after)
    end = b"-----END CERTIFICATE-----\n"
    leaf, issuer = (b + end for b in fullchain.split(end) if b.strip())
    with pytest.raises(StorageError, match="cannot be stored: the chain is in the wrong order"):
        storage.write_certificate_pair(tmp_path, HOST, issuer + leaf, key)
    assert list(tmp_path.iterdir()) == []


def test_pair_owner(tmp_path):
    fullchain, privkey = storage.certificate_paths(tmp_path, HOST)
    assert storage.pair_owner(tmp_path, fullchain) == HOST
    assert storage.pair_owner(tmp_path, privkey) == HOST
    assert storage.pair_owner(tmp_path, tmp_path / "certs" / "x.pem") is None
    assert storage.pair_owner(tmp_path, Path("/etc/nginx/sites/a.conf")) is None

"""Tests for the storage adapter: atomic files, certificate pairs, parsing."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured

from modoboa_pro.virtualhosts.adapters import storage
from modoboa_pro.virtualhosts.errors import ConfigurationError, InvalidHostname, StorageError

HOST = "mail.example.org"
UNSAFE_HOSTNAMES = [
    "",
    "..",
    "../etc",
    "a/b",
    ".hidden",
    "a b",
    "a\x00b",
    "a..b",
    "-a.example",
    "a.example.",
    "a\n.example",
    "x" * 64 + ".example",
]


def make_cert(
    key_pem: bytes,
    names: tuple[str, ...] = (HOST,),
    serial: int | None = None,
    issuer_cn: str | None = "Test CA",
    days: int = 90,
) -> bytes:
    """A PEM certificate for ``names`` with the public key of ``key_pem``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    issuer = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)])
        if issuer_cn
        else x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "No CN Org")])
    )
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_pair(names: tuple[str, ...] = (HOST,), serial: int | None = None) -> tuple[bytes, bytes]:
    key_pem = storage.generate_private_key()
    return make_cert(key_pem, names, serial), key_pem


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


# -- atomic_write / ensure_dir ------------------------------------------------


@pytest.mark.parametrize("file_mode", [0o600, 0o644])
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_atomic_write_sets_exact_mode(tmp_path, file_mode, umask):
    old = os.umask(umask)
    try:
        storage.atomic_write(tmp_path / "f", b"data", file_mode)
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"data"
    assert mode(tmp_path / "f") == file_mode


def test_atomic_write_mode_is_set_before_data(tmp_path, monkeypatch):
    seen = []
    real_fdopen = os.fdopen

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def fileno(self):
            return self.handle.fileno()

        def flush(self):
            self.handle.flush()

        def write(self, data):
            seen.append(os.fstat(self.handle.fileno()).st_mode & 0o777)
            return self.handle.write(data)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a: Spy(real_fdopen(fd, *a)))
    old = os.umask(0)
    try:
        storage.atomic_write(tmp_path / "key", b"secret", 0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f"
    storage.atomic_write(target, b"one", 0o644)
    storage.atomic_write(target, b"two", 0o644)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="left untouched") as info:
        storage.atomic_write(target, b"new", 0o644)
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_into_missing_directory(tmp_path):
    with pytest.raises(StorageError, match="Cannot create a file"):
        storage.atomic_write(tmp_path / "missing" / "f", b"x", 0o644)


def test_ensure_dir_creates_parents_and_fixes_mode(tmp_path):
    leaf = tmp_path / "a" / "b"
    storage.ensure_dir(leaf, 0o755)
    assert leaf.is_dir() and mode(leaf) == 0o755
    storage.ensure_dir(leaf, 0o700)  # an existing directory is tightened
    assert mode(leaf) == 0o700


# -- hostnames ----------------------------------------------------------------


@pytest.mark.parametrize("hostname", UNSAFE_HOSTNAMES)
def test_unsafe_hostnames_never_reach_a_path(tmp_path, hostname):
    fullchain, key = make_pair()
    calls = [
        lambda: storage.certificate_paths(tmp_path, hostname),
        lambda: storage.read_fullchain(tmp_path, hostname),
        lambda: storage.write_certificate_pair(tmp_path, hostname, fullchain, key),
        lambda: storage.previous_pair(tmp_path, hostname),
        lambda: storage.rollback_pair(tmp_path, hostname),
        lambda: storage.archive_host(tmp_path, hostname),
        lambda: storage.make_csr(hostname, key),
    ]
    for call in calls:
        with pytest.raises(InvalidHostname):
            call()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("hostname", ["example.org", "a-b.c-d.example", "XN--bcher-kva.example"])
def test_safe_hostnames_pass(hostname):
    assert storage.safe_hostname(hostname) == hostname


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
    other_key = storage.generate_private_key()
    with pytest.raises(StorageError, match="does not match"):
        storage.write_certificate_pair(tmp_path, HOST, good[0], other_key)
    after = sorted(p.name for p in (tmp_path / "certs" / ".pairs" / HOST).iterdir())
    assert before == after
    assert storage.read_fullchain(tmp_path, HOST) == good[0]


def test_mismatched_key_on_first_write_creates_nothing(tmp_path):
    fullchain, _ = make_pair()
    with pytest.raises(StorageError):
        storage.write_certificate_pair(tmp_path, HOST, fullchain, storage.generate_private_key())
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


def test_plain_directory_is_migrated(tmp_path):
    legacy = make_pair()
    plain = tmp_path / "certs" / HOST
    plain.mkdir(parents=True)
    (plain / "fullchain.pem").write_bytes(legacy[0])
    (plain / "privkey.pem").write_bytes(legacy[1])

    new = make_pair()
    storage.write_certificate_pair(tmp_path, HOST, *new)
    assert plain.is_symlink()
    assert storage.read_fullchain(tmp_path, HOST) == new[0]
    previous = storage.previous_pair(tmp_path, HOST)
    assert previous is not None
    assert (previous / "fullchain.pem").read_bytes() == legacy[0]
    assert mode(previous) == 0o700
    storage.rollback_pair(tmp_path, HOST)
    assert storage.read_fullchain(tmp_path, HOST) == legacy[0]


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


def test_archive_host_without_material(tmp_path):
    assert storage.archive_host(tmp_path, HOST) is None
    assert not (tmp_path / "archive").exists()


def test_archive_host_plain_directory(tmp_path):
    plain = tmp_path / "certs" / HOST
    plain.mkdir(parents=True)
    (plain / "fullchain.pem").write_bytes(b"legacy")
    archive = storage.archive_host(tmp_path, HOST)
    assert archive is not None
    assert (archive / "current" / "fullchain.pem").read_bytes() == b"legacy"
    assert not plain.exists()


# -- parsing ------------------------------------------------------------------


def test_parse_leaf_facts():
    key = storage.generate_private_key()
    pem = make_cert(key, (HOST, "www.example.org"), serial=0xABCDEF0123)
    facts = storage.parse_leaf(pem)
    cert = x509.load_pem_x509_certificate(pem)
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
    leaf = make_cert(storage.generate_private_key(), (HOST,), serial=1)
    issuer = make_cert(storage.generate_private_key(), ("ca.example",), serial=2)
    assert storage.parse_leaf(leaf + issuer).serial == "1"
    assert storage.parse_leaf(b"garbage before\n" + leaf).serial == "1"


def test_parse_leaf_issuer_without_cn():
    pem = make_cert(storage.generate_private_key(), issuer_cn=None)
    assert storage.parse_leaf(pem).issuer == "O=No CN Org"


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
        storage.parse_leaf(pem)


def test_facts_from_der():
    pem = make_cert(storage.generate_private_key(), serial=42)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert storage.facts_from_der(der) == storage.parse_leaf(pem)
    with pytest.raises(StorageError):
        storage.facts_from_der(b"\x30\x03junk")


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
    pem = storage.generate_private_key(key_type)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, kind)
    assert key.key_size == size


def test_generate_private_key_default_is_p256():
    key = serialization.load_pem_private_key(storage.generate_private_key(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_generate_private_key_unknown_type():
    with pytest.raises(ConfigurationError, match="ecdsa-p256, rsa-2048") as info:
        storage.generate_private_key("dsa-1024")
    assert isinstance(info.value, ImproperlyConfigured)


def test_make_csr():
    key = storage.generate_private_key()
    csr = x509.load_pem_x509_csr(storage.make_csr(HOST, key))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    public = serialization.load_pem_private_key(key, password=None).public_key()
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert csr.public_key().public_bytes(*spki) == public.public_bytes(*spki)


def test_make_csr_long_hostname_has_no_cn():
    hostname = ".".join(["a" * 40, "b" * 40, "example"])
    csr = x509.load_pem_x509_csr(storage.make_csr(hostname, storage.generate_private_key()))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [hostname]


def test_make_csr_bad_key():
    with pytest.raises(StorageError, match="not an unencrypted PEM key"):
        storage.make_csr(HOST, b"nope")

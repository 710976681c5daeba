"""Certificate pairs under the ACME storage path: versioned writes, swaps, rollback, archive.

On-disk layout (``<root>`` is ``acme_account_storage_path``)::

    <root>/webroot/                                  HTTP-01 challenge files
    <root>/certs/<hostname> -> .pairs/<hostname>/<version>   (relative symlink)
    <root>/certs/.pairs/<hostname>/<version>/fullchain.pem   0644
    <root>/certs/.pairs/<hostname>/<version>/privkey.pem     0600
    <root>/certs/.pairs/<hostname>/next-key.pem      0600  a mail host's next key (DANE)
    <root>/archive/<hostname>-<UTC timestamp>/       material of removed hosts

``certs/<hostname>/fullchain.pem`` is the path users and nginx configs rely on;
it resolves through the symlink, which is replaced with one ``rename(2)`` so a
key and its chain always change together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .. import constants
from ..errors import StorageError
from . import x509
from .files import (
    TEMP_TOKEN_BYTES,
    atomic_write,
    ensure_dir,
    fsync_dir,
    longest_temp_name,
    safe_hostname,
    temp_name,
    utc_stamp,
)
from .x509 import CertificateFacts

T = TypeVar("T")

PAIRS_DIRNAME = ".pairs"
# A mail host's pre-generated next key: beside the versions (``_prune`` and ``_versions``
# only see version directories), so it outlives every pair until it rotates in.
NEXT_KEY_FILENAME = "next-key.pem"
# The current version, the previous one (rollback target) and one more, in
# case a rollback itself turns out to be wrong.
PAIR_VERSIONS_KEEP = 3
# Version directories are "<sequence>-<UTC timestamp>": the sequence orders
# them, the timestamp tells an operator when each was written.
_VERSION_RE = re.compile(r"(\d{6})-\d{8}T\d{6}Z")
# The new certs/<hostname> symlink is made under a temporary name, then renamed over the old.
LINK_TEMP_SUFFIX = ".link"
# Archives of one host made within the same second get "-1", "-2"...: a few at most (each
# deletion of a host archives once). Bounded so that the name's length is known in advance.
ARCHIVE_COUNTER_MAX = 999


def archive_name(hostname: str, stamp: str, counter: int = 0) -> str:
    """``<hostname>-<UTC timestamp>``, then ``-<counter>`` when that name is taken."""
    name = f"{safe_hostname(hostname)}-{stamp}"
    return f"{name}-{counter}" if counter else name


def hostname_file_names(hostname: str) -> list[str]:
    """Every file name this module derives from ``hostname``, each at its longest.

    ``certs/<hostname>`` (the symlink), ``certs/.pairs/<hostname>``, the symlink's temporary
    name and ``archive/<hostname>-<stamp>-<counter>``: ``hostnames.py`` refuses a name for which
    one of these exceeds ``files.NAME_MAX``. Version directories and the pem files do not
    contain the name.
    """
    name = safe_hostname(hostname)
    return [
        name,
        longest_temp_name(name, LINK_TEMP_SUFFIX),
        archive_name(name, utc_stamp(), ARCHIVE_COUNTER_MAX),
    ]


# -- certificate pairs ------------------------------------------------------


def _certs_dir(storage_root: Path) -> Path:
    return Path(storage_root) / constants.CERTS_DIRNAME


def _pairs_dir(storage_root: Path, hostname: str) -> Path:
    return _certs_dir(storage_root) / PAIRS_DIRNAME / safe_hostname(hostname)


def _link(storage_root: Path, hostname: str) -> Path:
    return _certs_dir(storage_root) / safe_hostname(hostname)


def certificate_paths(storage_root: Path, hostname: str) -> tuple[Path, Path]:
    """The stable ``(fullchain, privkey)`` paths an nginx config should point at."""
    link = _link(storage_root, hostname)
    return link / constants.FULLCHAIN_FILENAME, link / constants.PRIVKEY_FILENAME


def pair_owner(storage_root: Path, path: Path) -> str | None:
    """The hostname whose ``fullchain.pem`` or ``privkey.pem`` ``path`` is, if it is one."""
    names = (constants.FULLCHAIN_FILENAME, constants.PRIVKEY_FILENAME)
    if path.name not in names or path.parent.parent != _certs_dir(storage_root):
        return None
    return path.parent.name


def read_fullchain(storage_root: Path, hostname: str) -> bytes | None:
    """The current fullchain PEM, or None when the host has no certificate."""
    fullchain, _ = certificate_paths(storage_root, hostname)
    try:
        return fullchain.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StorageError(
            f"Cannot read {fullchain}: {err.strerror}. Check the permissions of the storage path.",
        ) from err


@dataclass(frozen=True)
class StoredCertificate:
    """The host's current certificate as read from disk."""

    facts: CertificateFacts | None  # None: no usable certificate
    problem: str | None = None  # why the pair on disk cannot be used, for the operator
    # What identifies the files that passed every check (``pair_reader``), "" if not known.
    stamp: str = ""


# Larger than any pair this product stores (an RSA-4096 chain is ~7 KB): a file this big is
# not a certificate or a key, and is not read whole.
PEM_MAX_BYTES = 64 * 1024
# Said after every problem found in a stored pair: what the runs do about it.
REPLACED = "A new certificate and key replace the pair."
# Said of a private key others could read: mode 0600 stops further reads, a new key stops
# the use of a copy (revoking the old certificate is the operator's call). Once the mode is
# fixed nothing on the key shows it was exposed: this file, next to it, remembers until a
# new pair replaces it (a rollback to that pair finds it again).
EXPOSED_MARKER = "key-exposed"
EXPOSED = (
    "It may have been copied, so a new key and certificate replace it; revoke the current "
    "certificate (serial {serial}) if you think the key was read."
)


def read_current(
    storage_root: Path, hostname: str, *, issued_serial: str = "", repair: bool = False
) -> StoredCertificate:
    """Read and check the host's current pair as nginx loads it; never raises for bad files.

    Checked: both files present, reached without leaving ``certs/`` (a link out of
    it is not followed), complete PEM; the key's certificate first, then its
    issuers; a key of a type this product makes, matching the certificate; the
    certificate naming the host; the key readable by its owner only (with
    ``repair``, its mode is set back to 0600 first). Expiry is the policy's business.

    ``issued_serial`` is the serial recorded when a certificate was stored: a
    file missing after that is a problem, not "no certificate yet".
    """
    try:
        return _read_pair(Path(storage_root), hostname, issued_serial, repair)
    except StorageError as err:
        return StoredCertificate(None, f"certificate unusable: {err.message}. {REPLACED}")


def _read_pair(root: Path, hostname: str, issued_serial: str, repair: bool) -> StoredCertificate:
    fullchain_path, privkey_path = certificate_paths(root, hostname)
    # Resolved once for the pair's three reads (the scan reads thousands of pairs).
    certs = Path(os.path.realpath(_certs_dir(root)))
    read = _read_stored(root, fullchain_path, certs=certs)
    if read is None:
        if not issued_serial:
            return StoredCertificate(None)
        return StoredCertificate(
            None,
            f"{fullchain_path} is missing although a certificate was issued (serial "
            f"{issued_serial}); nginx fails its next configuration test until a new "
            "certificate is stored.",
        )
    chain_pem = read[0]
    chain = _about(fullchain_path, lambda: x509.load_chain(chain_pem))
    key_read = _read_stored(root, privkey_path, repair=repair, certs=certs)
    if key_read is None:
        raise StorageError(f"{privkey_path}: the private key is missing")
    key_pem, key_mode = key_read
    exposed = _exposure(root, privkey_path, key_mode, repair, certs)
    try:
        key = _about(privkey_path, lambda: x509.load_private_key(key_pem))
        _about(fullchain_path, lambda: x509.check_order(chain, key))
        _about(
            f"{fullchain_path} and {privkey_path}", lambda: x509.check_key_matches(chain[0], key)
        )
        facts = x509.facts_of(chain[0])
        _about(fullchain_path, lambda: x509.check_names(chain[0], hostname, facts))
    except StorageError as err:
        raise StorageError(f"{err.message}; also, {exposed}" if exposed else err.message) from err
    if exposed:
        return StoredCertificate(
            None, f"private key exposed: {exposed}. {EXPOSED.format(serial=facts.serial)}"
        )
    return StoredCertificate(facts)


def _about(where: Path | str, check: Callable[[], T]) -> T:
    """Run ``check``; name ``where`` (the file at fault) in the error it raises."""
    try:
        return check()
    except StorageError as err:
        raise StorageError(f"{where}: {err.message}", detail=err.detail) from err


def _exposure(root: Path, key: Path, found_mode: int, repaired: bool, certs: Path) -> str:
    """What to tell about a private key others could read, now or before ("" if never)."""
    marker = key.parent / EXPOSED_MARKER
    if found_mode & 0o077:
        said = f"{key} was readable by other users (mode {found_mode:04o})"
        if not repaired:
            return f"{said}; chmod {constants.PRIVATE_FILE_MODE:o} {key} closes it"
        atomic_write(marker, f"{said}, found {utc_stamp()}\n".encode(), constants.PRIVATE_FILE_MODE)
    elif not os.path.lexists(marker):
        return ""  # the common case, in one lstat
    elif (recorded := _read_stored(root, marker, certs=certs)) is None:
        return ""
    else:
        lines = recorded[0].decode("utf-8", "replace").strip().splitlines()
        said = (lines or [f"{key} was readable by other users"])[0][:500]
    return f"{said}; its mode is now {constants.PRIVATE_FILE_MODE:04o}"


def _read_stored(
    root: Path, path: Path, *, repair: bool = False, certs: Path | None = None
) -> tuple[bytes, int] | None:
    """One file of a pair and its mode as found, or None when absent.

    Links are followed only inside ``certs/``: a link leading elsewhere (placed by
    something else, as this module never makes one) is not read. With ``repair``,
    a file others could read is made private before it is read. ``certs``: ``certs/``
    resolved, when the caller already did.
    """
    if certs is None:
        certs = Path(os.path.realpath(_certs_dir(root)))
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(certs):
        raise StorageError(
            f"{path}: it leads to {real}, outside {certs}; links there are made by this "
            "product and never leave it, so it was not read"
        )
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StorageError(
            f"Cannot read {path}: {err.strerror}. Check the permissions of the storage path"
        ) from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            reason = os.strerror(errno.EISDIR) if stat.S_ISDIR(info.st_mode) else "not a file"
            raise StorageError(f"Cannot read {path}: {reason}")
        if repair and info.st_mode & 0o077:
            try:
                os.fchmod(fd, constants.PRIVATE_FILE_MODE)
            except OSError as err:
                raise StorageError(
                    f"{path}: readable by other users (mode {stat.S_IMODE(info.st_mode):04o}) "
                    f"and its mode cannot be changed ({err.strerror}); run chmod "
                    f"{constants.PRIVATE_FILE_MODE:o} {path}"
                ) from err
        data = _read_at_most(fd, PEM_MAX_BYTES + 1)
    except OSError as err:
        raise StorageError(f"Cannot read {path}: {err.strerror}") from err
    finally:
        os.close(fd)
    if len(data) > PEM_MAX_BYTES:
        raise StorageError(
            f"{path}: the file is larger than {PEM_MAX_BYTES // 1024} KiB, which no "
            "certificate chain or key is"
        )
    return data, stat.S_IMODE(info.st_mode)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def is_version_name(name: str) -> bool:
    """Whether ``name`` is a version directory's name (``<sequence>-<UTC timestamp>``)."""
    return _VERSION_RE.fullmatch(name) is not None


def _versions(pairs: Path) -> list[Path]:
    """Version directories, oldest first."""
    if not pairs.is_dir():
        return []
    found = [p for p in pairs.iterdir() if _VERSION_RE.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def _current(storage_root: Path, hostname: str) -> Path | None:
    link = _link(storage_root, hostname)
    if not link.is_symlink():
        return None
    return (link.parent / os.readlink(link)).resolve()


def _new_version_dir(pairs: Path) -> Path:
    existing = _versions(pairs)
    sequence = int(existing[-1].name[:6]) + 1 if existing else 1
    while True:
        candidate = pairs / f"{sequence:06d}-{utc_stamp()}"
        try:
            # An exclusive mkdir: two writers never share a version directory.
            os.mkdir(candidate, constants.PRIVATE_DIR_MODE)
            os.chmod(candidate, constants.PRIVATE_DIR_MODE)
        except FileExistsError:
            sequence += 1
            continue
        except OSError as err:
            raise StorageError(f"Cannot create {candidate}: {err.strerror}.") from err
        return candidate


def _point_link(storage_root: Path, hostname: str, version: Path) -> None:
    """Atomically make ``certs/<hostname>`` point at ``version``."""
    link = _link(storage_root, hostname)
    target = os.path.relpath(version, link.parent)
    tmp = link.parent / temp_name(link.name, LINK_TEMP_SUFFIX)
    try:
        os.symlink(target, tmp)
        # rename(2) over the old symlink: readers resolve either the old or the new pair.
        os.replace(tmp, link)
        fsync_dir(link.parent)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise StorageError(
            f"Cannot switch {link} to the new certificate: {err.strerror}. The previous "
            "certificate is still in place.",
        ) from err


def _whole(version: Path) -> bool:
    """Both files are written (a writer killed between the key and the chain leaves a key)."""
    names = (constants.FULLCHAIN_FILENAME, constants.PRIVKEY_FILENAME)
    return all((version / name).is_file() for name in names)


def _prune(storage_root: Path, hostname: str) -> None:
    """Remove the versions beyond ``PAIR_VERSIONS_KEEP``, and halves left by killed writers.

    Called under the host's lock (the pipeline holds it): no other writer of this host is
    alive, so a version without both files can never be completed.
    """
    current = _current(storage_root, hostname)
    versions = _versions(_pairs_dir(storage_root, hostname))
    whole = [v for v in versions if _whole(v)]
    halves = [v for v in versions if not _whole(v)]
    for old in halves + whole[:-PAIR_VERSIONS_KEEP]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
    # A writer killed between making its temporary link and renaming it leaves the link.
    # Exactly this host's (``x.test``'s pattern must not match ``x.test.example``'s).
    link = _link(storage_root, hostname)
    mine = re.compile(
        rf"\.{re.escape(hostname)}\.[0-9a-f]{{{2 * TEMP_TOKEN_BYTES}}}{re.escape(LINK_TEMP_SUFFIX)}"
    )
    for stale in link.parent.glob(f".{hostname}.*{LINK_TEMP_SUFFIX}"):
        if mine.fullmatch(stale.name) and stale.is_symlink():
            stale.unlink(missing_ok=True)


def _check_pair(fullchain_pem: bytes, privkey_pem: bytes) -> None:
    """Refuse to store a pair nginx would refuse (e.g. a CA's chain in the wrong order)."""
    try:
        x509.check_pair(fullchain_pem, privkey_pem)
    except StorageError as err:
        raise StorageError(
            f"The new certificate cannot be stored: {err.message}. Nothing was written and "
            "the previous certificate is still in place.",
            detail=err.detail,
        ) from err


# What a probe writes: more than a real pair (an ECDSA chain is ~3 KB, an RSA-4096 one
# ~7 KB), so a disk with room for the probe has room for the pair.
STORE_PROBE_BYTES = 16 * 1024


def check_writable(storage_root: Path, hostname: str) -> None:
    """Raise StorageError unless a pair for ``hostname`` could be stored now.

    Called before ordering: a certificate the CA issues and we cannot keep still
    costs rate limit, and every retry would order again. The probe takes the
    same path as ``write_certificate_pair``: the directories, a file of the
    size of a pair (then removed), and a symlink swap in ``certs/``.
    """
    safe_hostname(hostname)
    root = Path(storage_root)
    try:
        certs = ensure_dir(_certs_dir(root), constants.PRIVATE_DIR_MODE)
        ensure_dir(certs / PAIRS_DIRNAME, constants.PRIVATE_DIR_MODE)
        _probe(certs, ensure_dir(_pairs_dir(root, hostname), constants.PRIVATE_DIR_MODE))
    except StorageError as err:
        raise StorageError(
            f"Certificates for {hostname} cannot be stored: {err.message} No certificate "
            "was ordered. Free space or fix the permissions of the storage path (Settings > "
            "Virtual hosts), then retry provisioning.",
            retryable=True,
        ) from err


def _probe(certs: Path, pairs: Path) -> None:
    """Write and remove what storing a pair writes: a file of a pair's size, a symlink."""
    probe = pairs / temp_name("store-probe")
    link = certs / temp_name("link-probe")
    try:
        atomic_write(probe, b"\0" * STORE_PROBE_BYTES, constants.PRIVATE_FILE_MODE)
        os.symlink(probe.name, link)
    except OSError as err:
        raise StorageError(f"Cannot write in {certs}: {err.strerror}.") from err
    finally:
        with contextlib.suppress(OSError):
            link.unlink()
        with contextlib.suppress(OSError):
            probe.unlink()


def write_certificate_pair(
    storage_root: Path, hostname: str, fullchain_pem: bytes, privkey_pem: bytes
) -> Path:
    """Store a new key + chain and switch to them as one; return the version directory.

    The pair is written into a fresh version directory, then the
    ``certs/<hostname>`` symlink is swapped with a single rename. Older versions
    beyond ``PAIR_VERSIONS_KEEP`` are pruned; the previous one stays for rollback.
    """
    safe_hostname(hostname)
    _check_pair(fullchain_pem, privkey_pem)
    root = Path(storage_root)
    ensure_dir(_certs_dir(root), constants.PRIVATE_DIR_MODE)
    ensure_dir(_certs_dir(root) / PAIRS_DIRNAME, constants.PRIVATE_DIR_MODE)
    pairs = ensure_dir(_pairs_dir(root, hostname), constants.PRIVATE_DIR_MODE)
    version = _new_version_dir(pairs)
    try:
        atomic_write(version / constants.PRIVKEY_FILENAME, privkey_pem, constants.PRIVATE_FILE_MODE)
        atomic_write(
            version / constants.FULLCHAIN_FILENAME, fullchain_pem, constants.PUBLIC_FILE_MODE
        )
        fsync_dir(pairs)
        _point_link(root, hostname, version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    _prune(root, hostname)
    return version


def read_current_key(storage_root: Path, hostname: str) -> bytes | None:
    """The current pair's private key (PEM), or None when there is none.

    Call it after ``read_current`` found the pair usable: the key then matches it.
    """
    _, privkey = certificate_paths(storage_root, hostname)
    read = _read_stored(Path(storage_root), privkey, repair=True)
    return None if read is None else read[0]


def read_next_key(storage_root: Path, hostname: str) -> bytes | None:
    """The host's pre-generated next key (PEM), or None when there is none or it is not a
    key this product can use (the caller makes a new one)."""
    path = _pairs_dir(storage_root, hostname) / NEXT_KEY_FILENAME
    try:
        read = _read_stored(Path(storage_root), path, repair=True)
    except StorageError:
        return None
    if read is None:
        return None
    try:
        x509.load_private_key(read[0])
    except StorageError:
        return None
    return read[0]


def write_next_key(storage_root: Path, hostname: str, key_pem: bytes) -> Path:
    """Store (atomically, mode 0600) the host's next key, replacing the previous one."""
    safe_hostname(hostname)
    root = Path(storage_root)
    ensure_dir(_certs_dir(root), constants.PRIVATE_DIR_MODE)
    ensure_dir(_certs_dir(root) / PAIRS_DIRNAME, constants.PRIVATE_DIR_MODE)
    pairs = ensure_dir(_pairs_dir(root, hostname), constants.PRIVATE_DIR_MODE)
    path = pairs / NEXT_KEY_FILENAME
    atomic_write(path, key_pem, constants.PRIVATE_FILE_MODE)
    fsync_dir(pairs)
    return path


def previous_pair(storage_root: Path, hostname: str) -> Path | None:
    """The version directory a rollback would restore (the newest whole pair older than the
    current one), or None."""
    current = _current(storage_root, hostname)
    older = [
        v
        for v in _versions(_pairs_dir(storage_root, hostname))
        if (current is None or v.name < current.name) and _whole(v)
    ]
    return older[-1] if older else None


def rollback_pair(storage_root: Path, hostname: str) -> Path:
    """Atomically switch back to the previous pair; return its version directory.

    The abandoned pair is deleted afterwards so that it can never become a
    rollback target itself.
    """
    current = _current(storage_root, hostname)
    previous = previous_pair(storage_root, hostname)
    if previous is None:
        raise StorageError(f"There is no previous certificate for {hostname} to roll back to.")
    _point_link(storage_root, hostname, previous)
    if current is not None and current.parent == previous.resolve().parent:
        shutil.rmtree(current, ignore_errors=True)
    return previous


def _new_archive_dir(archive_root: Path, hostname: str) -> Path:
    stamp = utc_stamp()
    for counter in range(ARCHIVE_COUNTER_MAX + 1):
        archive = archive_root / archive_name(hostname, stamp, counter)
        try:
            os.mkdir(archive, constants.PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise StorageError(f"Cannot create {archive}: {err.strerror}.") from err
        return archive
    raise StorageError(
        f"Cannot archive {hostname}: {ARCHIVE_COUNTER_MAX + 1} archives of it were made in "
        f"the same second under {archive_root}. Retry in a second.",
        retryable=True,
    )


def archive_host(storage_root: Path, hostname: str) -> Path | None:
    """Move a host's certificate material under ``archive/``; return where, or None.

    Nothing is deleted: versions go to ``<archive>/versions/`` and
    ``<archive>/current`` records which one was live.
    """
    root = Path(storage_root)
    link = _link(root, hostname)
    pairs = _pairs_dir(root, hostname)
    if not link.is_symlink() and not pairs.exists():
        return None
    archive_root = ensure_dir(root / constants.ARCHIVE_DIRNAME, constants.PRIVATE_DIR_MODE)
    archive = _new_archive_dir(archive_root, hostname)
    versions = archive / "versions"
    try:
        os.mkdir(versions, constants.PRIVATE_DIR_MODE)
        current = _current(root, hostname)
        if link.is_symlink():
            # Unlink first: from now on the host has no certificate, as removal intends.
            os.unlink(link)
        if pairs.is_dir():
            for version in pairs.iterdir():
                # The next key is no version: it goes beside them.
                into = archive if version.name == NEXT_KEY_FILENAME else versions
                os.rename(version, into / version.name)
            os.rmdir(pairs)
        if current is not None:
            os.symlink(os.path.join("versions", current.name), archive / "current")
        fsync_dir(archive)
    except OSError as err:
        raise StorageError(
            f"Archiving the certificates of {hostname} into {archive} failed: "
            f"{err.strerror}. Files already moved are in {archive}; the rest are still "
            f"under {_certs_dir(root)}.",
        ) from err
    return archive

"""Certificate pairs under the ACME storage path: versioned writes, swaps, rollback, archive.

On-disk layout (``<root>`` is ``acme_account_storage_path``)::

    <root>/webroot/                                  HTTP-01 challenge files
    <root>/certs/<hostname> -> .pairs/<hostname>/<version>   (relative symlink)
    <root>/certs/.pairs/<hostname>/<version>/fullchain.pem   0644
    <root>/certs/.pairs/<hostname>/<version>/privkey.pem     0600
    <root>/archive/<hostname>-<UTC timestamp>/       material of removed hosts

``certs/<hostname>/fullchain.pem`` is the path users and nginx configs rely on;
it resolves through the symlink, which is replaced with one ``rename(2)`` so a
key and its chain always change together.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import constants
from ..errors import StorageError
from .files import (
    atomic_write,
    ensure_dir,
    fsync_dir,
    longest_temp_name,
    safe_hostname,
    temp_name,
    utc_stamp,
)
from .x509 import CertificateFacts, key_matches, parse_leaf

PAIRS_DIRNAME = ".pairs"
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
    problem: str | None = None  # why the file on disk cannot be used, for the operator


def read_current(
    storage_root: Path, hostname: str, *, issued_serial: str = ""
) -> StoredCertificate:
    """Read and parse ``certs/<hostname>/fullchain.pem``; never raises for a bad file.

    ``issued_serial`` is the serial recorded when a certificate was stored: a
    file missing after that is a problem, not "no certificate yet".
    """
    path = certificate_paths(storage_root, hostname)[0]
    try:
        pem = read_fullchain(storage_root, hostname)
        if pem is None:
            if not issued_serial:
                return StoredCertificate(None)
            return StoredCertificate(
                None,
                f"{path} is missing although a certificate was issued (serial "
                f"{issued_serial}); nginx fails its next configuration test until a new "
                "certificate is stored.",
            )
        return StoredCertificate(parse_leaf(pem))
    except StorageError as err:
        return StoredCertificate(None, f"certificate unusable: {path}: {err.message}")


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


def _check_pair(fullchain_pem: bytes, privkey_pem: bytes) -> None:
    if not key_matches(fullchain_pem, privkey_pem):
        raise StorageError(
            "The private key does not match the certificate's public key; nothing was "
            "written and the previous certificate is still in place."
        )


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
                os.rename(version, versions / version.name)
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

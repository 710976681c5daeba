"""Many hosts' pairs read in a row (the renewal scan): ``certs/`` resolved once, and the pair
checks skipped for files unchanged since they passed them.

A pair laid out as this product lays it out (``certs/<hostname>`` a relative link to
``.pairs/<hostname>/<version>``, plain directories and files, none a link) is read through
directory descriptors opened with ``O_NOFOLLOW``: nothing on the way can lead out of
``certs/``, so no path needs resolving. Anything else (a missing file, a link elsewhere, a
key others can read, a pair that fails a check) is read again by ``storage.read_current``,
which says what is wrong in its own words: this module only makes the usual case cheap.

The pair checks that depend only on the files' content (the chain's order and signatures,
the key's type and its match with the certificate) are skipped when the files are those
that passed them before: for both files the same device, inode, size, modification and
change times (the *stamp*, recorded by the caller). Any write to a file changes its change
time, which no program can set back, and so does a chmod. What can change without touching
the files is checked by every full read: the layout, the key's mode, the exposure marker,
the certificate's names. The marker needs no check of its own in ``unchanged``: a stamped
pair has none, and this product writes one only when it makes an exposed key private,
whose chmod moves the key's change time.

The stamp also binds the leaf's facts that the renewal decision needs: a digest of the
hostname (a leaf passed only if it covers it), serial and validity (``facts_digest``), and
one of its ARI id (``ari_digest``, "" without one). ``unchanged`` tells the scan that a
host's files still have their stamp and that the facts recorded on its row are those of
its leaf, with two ``stat`` calls and without opening either file; ``stamped_ari`` tells
whether the leaf's ARI id is the one the row's ARI answer is about.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from .. import constants
from ..errors import StorageError
from . import storage, x509
from .files import safe_hostname

# File times advance by clock ticks (a few milliseconds): a file rewritten within the tick
# of its previous write keeps its times. A stamp is returned only for files last changed
# longer ago than this, so no rewrite can hide behind a stamp recorded in the same tick.
STAMP_SETTLE_NS = 2_000_000_000
# Recorded stamps start with it: a change of what a stamp holds changes it, and every
# pair is checked in full once. 2: the leaf's facts digest added. 3: the version
# directory's name left out (files are named by device and inode).
STAMP_VERSION = "3"

_T = TypeVar("_T")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class PairReader:
    """Reads hosts' current pairs as ``storage.read_current`` does, for a scan of many.

    Use as a context manager (it holds descriptors of ``certs/`` and ``certs/.pairs/``).
    ``full_checks`` and ``skipped_checks`` count the pairs whose content was checked and
    those whose unchanged stamp spared it.
    """

    def __init__(self, storage_root: Path) -> None:
        self.storage_root = Path(storage_root)
        self.full_checks = 0
        self.skipped_checks = 0
        self._certs_fd: int | None = None
        self._pairs_fd: int | None = None

    def __enter__(self) -> PairReader:
        certs = self.storage_root / constants.CERTS_DIRNAME
        try:
            # Resolved once: the links of the root itself are the operator's choice.
            self._certs_fd = os.open(os.path.realpath(certs), _DIR_FLAGS & ~os.O_NOFOLLOW)
            self._pairs_fd = os.open(storage.PAIRS_DIRNAME, _DIR_FLAGS, dir_fd=self._certs_fd)
        except OSError:
            pass  # no pairs yet, or an unusual layout: every read takes read_current's path
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for fd in (self._pairs_fd, self._certs_fd):
            if fd is not None:
                os.close(fd)
        self._certs_fd = self._pairs_fd = None

    def read(
        self,
        hostname: str,
        *,
        issued_serial: str = "",
        repair: bool = False,
        verified_stamp: str = "",
    ) -> storage.StoredCertificate:
        """The host's pair, checked as ``storage.read_current`` checks it.

        ``verified_stamp``: the stamp returned for this host's pair by an earlier read;
        when the files still have it, only what can change without writing them is checked.
        The result's ``stamp`` is the one to record ("" when there is none to record).
        """
        try:
            found = self._read_plain(hostname, verified_stamp)
        except (OSError, StorageError, ValueError):
            found = None
        if found is not None:
            return found
        self.full_checks += 1
        return storage.read_current(
            self.storage_root, hostname, issued_serial=issued_serial, repair=repair
        )

    def unchanged(
        self,
        hostname: str,
        verified_stamp: str,
        recorded: tuple[str, datetime.datetime, datetime.datetime],
    ) -> bool:
        """True when the host's pair still has ``verified_stamp`` and ``recorded`` (serial,
        not before, not after) are its leaf's facts: the facts the scan would read, known
        without opening or parsing either file (its ARI id: ``stamped_ari``). False:
        ``read`` it.

        Both files are looked at as nginx reaches them, through ``certs/<hostname>``: a
        stamp names files by device and inode, so the same stamp is the same files that
        passed every check, however they are reached. A chmod changes the key's change
        time, and the mode is checked here too.
        """
        if not verified_stamp or self._certs_fd is None:
            return False
        try:
            name = safe_hostname(hostname)
            chain_info = os.stat(f"{name}/{constants.FULLCHAIN_FILENAME}", dir_fd=self._certs_fd)
            key_info = os.stat(f"{name}/{constants.PRIVKEY_FILENAME}", dir_fd=self._certs_fd)
        except (OSError, StorageError, ValueError):
            return False
        if not stat.S_ISREG(key_info.st_mode) or key_info.st_mode & 0o077:
            return False
        files = _stamp(chain_info, key_info)
        expected = f"{files}:{facts_digest(hostname, *recorded)}:{stamped_ari(verified_stamp)}"
        if verified_stamp != expected:
            return False
        self.skipped_checks += 1
        return True

    def _read_plain(self, hostname: str, verified_stamp: str) -> storage.StoredCertificate | None:
        """The pair through the layout this product makes, or None to take the full path."""
        return self._at_version(
            hostname,
            lambda host, fd: self._read_version(host, fd, verified_stamp),
        )

    def _at_version(self, hostname: str, then: Callable[[str, int], _T | None]) -> _T | None:
        """``then(hostname, descriptor)`` on the host's current version directory,
        reached through the layout this product makes; None when it is laid out otherwise."""
        if self._certs_fd is None or self._pairs_fd is None:
            return None
        name = safe_hostname(hostname)
        pairs_name, slash, version = os.readlink(name, dir_fd=self._certs_fd).partition("/")
        if pairs_name != storage.PAIRS_DIRNAME or not slash:
            return None
        own, slash, version = version.partition("/")
        if own != name or not slash or not storage.is_version_name(version):
            return None
        host_fd = os.open(own, _DIR_FLAGS, dir_fd=self._pairs_fd)
        try:
            version_fd = os.open(version, _DIR_FLAGS, dir_fd=host_fd)
        finally:
            os.close(host_fd)
        try:
            return then(hostname, version_fd)
        finally:
            os.close(version_fd)

    @staticmethod
    def _private_key_info(version_fd: int) -> os.stat_result | None:
        """The key's status, or None when it is no private regular file or the exposure
        marker is there (``read_current`` says so, and repairs what it may)."""
        key_info = os.stat(constants.PRIVKEY_FILENAME, dir_fd=version_fd, follow_symlinks=False)
        if not stat.S_ISREG(key_info.st_mode) or key_info.st_mode & 0o077:
            return None
        if _exists(storage.EXPOSED_MARKER, version_fd):
            return None
        return key_info

    def _read_version(
        self, hostname: str, version_fd: int, verified_stamp: str
    ) -> storage.StoredCertificate | None:
        key_info = self._private_key_info(version_fd)
        if key_info is None:
            return None
        chain_pem, chain_info = _read(constants.FULLCHAIN_FILENAME, version_fd)
        files = _stamp(chain_info, key_info)
        if verified_stamp.startswith(files + ":"):
            facts = x509.parse_leaf(chain_pem)  # the chain behind it passed every check
            if hostname not in facts.names or verified_stamp != _with_facts(files, hostname, facts):
                return None
            self.skipped_checks += 1
            return storage.StoredCertificate(facts, stamp=verified_stamp)
        key_pem, key_read_info = _read(constants.PRIVKEY_FILENAME, version_fd)
        if key_read_info.st_mode & 0o077:
            return None
        chain = x509.load_chain(chain_pem)
        key = x509.load_private_key(key_pem)
        x509.check_order(chain, key)
        x509.check_key_matches(chain[0], key)
        facts = x509.facts_of(chain[0])
        if hostname not in facts.names:
            return None
        stamp = _with_facts(_stamp(chain_info, key_read_info), hostname, facts)
        settled = time.time_ns() - STAMP_SETTLE_NS
        if max(chain_info.st_ctime_ns, key_read_info.st_ctime_ns) > settled:
            stamp = ""  # changed moments ago: checked in full again next time
        self.full_checks += 1
        return storage.StoredCertificate(facts, stamp=stamp)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read(name: str, dir_fd: int) -> tuple[bytes, os.stat_result]:
    """A regular file's content (at most ``PEM_MAX_BYTES``) and its status when opened."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > storage.PEM_MAX_BYTES:
            raise ValueError(name)
        data = os.read(fd, storage.PEM_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise ValueError(name)  # changing while read
    return data, info


def facts_digest(
    hostname: str, serial: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> str:
    """What the stamp binds of the leaf: equal digests, equal facts for the decision."""
    text = f"{hostname}/{serial}/{not_before.timestamp()!r}/{not_after.timestamp()!r}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def ari_digest(ari_id: str) -> str:
    """What the stamp keeps of the leaf's ARI id: "" for none, else a digest of it."""
    return hashlib.blake2b(ari_id.encode(), digest_size=8).hexdigest() if ari_id else ""


def stamped_ari(stamp: str) -> str:
    """The ``ari_digest`` of the stamped leaf's ARI id (compare with the row's)."""
    return stamp.rpartition(":")[2]


def _with_facts(files: str, hostname: str, facts: x509.CertificateFacts) -> str:
    digest = facts_digest(hostname, facts.serial, facts.not_before, facts.not_after)
    return f"{files}:{digest}:{ari_digest(facts.ari_id)}"


def _stamp(*files: os.stat_result) -> str:
    held = ":".join(
        f"{i.st_dev:x}.{i.st_ino:x}.{i.st_size:x}.{i.st_mtime_ns:x}.{i.st_ctime_ns:x}"
        for i in files
    )
    return f"{STAMP_VERSION}:{held}"

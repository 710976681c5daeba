"""Files written safely: atomic replacement, directories with exact modes, safe names."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
from pathlib import Path

from .. import constants
from ..errors import InvalidHostname, StorageError

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

# Linux's NAME_MAX: the longest file-name component, in bytes, on ext4, xfs, btrfs and tmpfs.
# Longer names fail with ENAMETOOLONG, so hostnames.py refuses names whose files would not fit.
NAME_MAX = 255
# Random part of temporary names: 6 bytes (12 hex digits) never collide between the few
# writers of one directory, and keep the name short (it counts against NAME_MAX).
TEMP_TOKEN_BYTES = 6
TEMP_SUFFIX = ".tmp"


def safe_hostname(hostname: str) -> str:
    """Return ``hostname`` if it is a plain DNS name, safe to join into a path.

    Defense in depth: the model validates hostnames too, but nothing that could
    escape a directory (``/``, ``..``, NUL, whitespace, a leading dot) may reach
    the filesystem or an nginx config even if that validation is bypassed.
    """
    if (
        not isinstance(hostname, str)
        or len(hostname) > constants.HOSTNAME_MAX_LENGTH
        or not _HOSTNAME_RE.fullmatch(hostname)
    ):
        raise InvalidHostname(
            f"Refusing to use {hostname!r} as a hostname: only DNS names made of "
            "letters, digits, hyphens and dots are allowed. Fix the virtual host's name."
        )
    return hostname


def utc_stamp() -> str:
    """``20260102T030405Z``: fixed width, sorts by time."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def temp_name(name: str, suffix: str = TEMP_SUFFIX, token: str | None = None) -> str:
    """``.<name>.<random hex>.tmp``: hidden, next to ``name``, unique per writer.

    ``token`` is for callers that compute the longest name (the random part is fixed-width).
    """
    if token is None:
        token = secrets.token_hex(TEMP_TOKEN_BYTES)
    return f".{name}.{token}{suffix}"


def longest_temp_name(name: str, suffix: str = TEMP_SUFFIX) -> str:
    """What :func:`temp_name` returns for ``name`` at its longest (every token has one width)."""
    return temp_name(name, suffix, token="0" * (2 * TEMP_TOKEN_BYTES))


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    The temporary file gets its final mode before any byte is written, so a
    private key is never readable by others, not even for an instant.
    """
    path = Path(path)
    tmp = path.parent / temp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as err:
        raise StorageError(
            f"Cannot create a file in {path.parent}: {err.strerror}. Check that the "
            "directory exists and that the worker may write to it.",
        ) from err
    try:
        _fill(fd, data, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise StorageError(
                f"Cannot write {path}: {err.strerror}. Check free space and permissions; "
                "the previous file, if any, was left untouched.",
            ) from err
        raise
    try:
        fsync_dir(path.parent)
    except OSError as err:
        raise StorageError(f"Cannot flush {path.parent} to disk: {err.strerror}.") from err


def _fill(fd: int, data: bytes, mode: int) -> None:
    """Give a new temporary file its mode, then ``data``, flushed to disk; close it."""
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # os.open's mode is filtered by the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` holding ``data``, whole, unless it exists: False then, and the file
    already there is left as it is (another process created it first)."""
    path = Path(path)
    tmp = path.parent / temp_name(path.name)
    try:
        _fill(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode), data, mode)
        try:
            os.link(tmp, path)  # unlike a rename, never replaces what is there
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    except OSError as err:
        raise StorageError(
            f"Cannot write {path}: {err.strerror}. Check free space and permissions."
        ) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def put_back(path: Path, data: bytes | None, mode: int) -> None:
    """Make ``path`` hold ``data`` atomically, or not exist (``data`` None): what a caller
    read before changing a file, restored. Raises OSError or StorageError."""
    path = Path(path)
    if data is not None:
        atomic_write(path, data, mode)
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def ensure_dir(path: Path, mode: int) -> Path:
    """Create ``path`` (and its parents) and set the leaf's mode exactly."""
    path = Path(path)
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask, and ignored if it existed
    except OSError as err:
        raise StorageError(
            f"Cannot create directory {path}: {err.strerror}. Check that the storage "
            "path setting points to a writable location.",
        ) from err
    return path

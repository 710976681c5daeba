"""Certificate files under the ACME storage path: atomic writes, pair swaps, parsing.

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
import datetime
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from .. import constants
from ..errors import ConfigurationError, InvalidHostname, StorageError

PAIRS_DIRNAME = ".pairs"
# The current version, the previous one (rollback target) and one more, in
# case a rollback itself turns out to be wrong.
PAIR_VERSIONS_KEEP = 3

KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
# Version directories are "<sequence>-<UTC timestamp>": the sequence orders
# them, the timestamp tells an operator when each was written.
_VERSION_RE = re.compile(r"(\d{6})-\d{8}T\d{6}Z")


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


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


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
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as err:
        raise StorageError(
            f"Cannot create a file in {path.parent}: {err.strerror}. Check that the "
            "directory exists and that the worker may write to it.",
        ) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # os.open's mode is filtered by the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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


# -- certificate facts ------------------------------------------------------


@dataclass(frozen=True)
class CertificateFacts:
    """What the app records about a certificate; plain values only."""

    serial: str  # lower-case hex, no colons
    not_before: datetime.datetime  # timezone-aware UTC
    not_after: datetime.datetime  # timezone-aware UTC
    issuer: str
    names: tuple[str, ...]  # DNS subjectAltNames
    fingerprint_sha256: str  # lower-case hex of the DER


def _facts(cert: x509.Certificate) -> CertificateFacts:
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(issuer_cn[0].value) if issuer_cn else cert.issuer.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateFacts(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=issuer,
        names=names,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _load_leaf(pem: bytes) -> x509.Certificate:
    match = _PEM_CERT_RE.search(pem or b"")
    try:
        if match is None:
            raise ValueError("no PEM certificate block")
        return x509.load_pem_x509_certificate(match.group(0))
    except ValueError as err:
        raise StorageError(
            "The file is not a PEM certificate (no readable '-----BEGIN CERTIFICATE-----' "
            "block). Remove or replace it; the next run will issue a new certificate.",
            detail=str(err),
        ) from err


def parse_leaf(pem: bytes) -> CertificateFacts:
    """Facts of the first certificate in a PEM chain (the leaf, in a fullchain)."""
    return _facts(_load_leaf(pem))


def facts_from_der(der: bytes) -> CertificateFacts:
    """Facts of a DER certificate (e.g. the one a TLS server presents)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise StorageError(
            "The peer sent data that is not a DER certificate.", detail=str(err)
        ) from err
    return _facts(cert)


# -- keys and CSRs ----------------------------------------------------------


def generate_private_key(key_type: str = "ecdsa-p256") -> bytes:
    """A new unencrypted PKCS#8 PEM private key of ``key_type`` (see ``KEY_TYPES``)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    else:
        raise ConfigurationError(
            f"Unknown certificate key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}."
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(key_pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise StorageError(
            "The private key is not an unencrypted PEM key; it cannot be used.",
            detail=str(err),
        ) from err


def make_csr(hostname: str, key_pem: bytes) -> bytes:
    """A PEM CSR for ``hostname`` (SAN and, when it fits, CN) signed by ``key_pem``."""
    safe_hostname(hostname)
    key = _load_key(key_pem)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise StorageError("Only ECDSA and RSA keys can sign a certificate request.")
    # X.509 caps a CN at 64 characters; CAs read the names from the SAN anyway.
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, hostname)] if len(hostname) <= 64 else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


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
        candidate = pairs / f"{sequence:06d}-{_utc_stamp()}"
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
    tmp = link.parent / f".{link.name}.{secrets.token_hex(6)}.link"
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


def _migrate_plain_dir(storage_root: Path, hostname: str, pairs: Path) -> None:
    """Turn a legacy ``certs/<hostname>/`` directory into the first version.

    A directory cannot be renamed over atomically, so ``certs/<hostname>`` is
    briefly absent; nginx only reads it on the reload that follows the write.
    """
    link = _link(storage_root, hostname)
    if link.is_symlink() or not link.is_dir():
        return
    version = _new_version_dir(pairs)
    try:
        os.rmdir(version)
        os.rename(link, version)
        os.chmod(version, constants.PRIVATE_DIR_MODE)
    except OSError as err:
        raise StorageError(
            f"Cannot migrate the certificate directory {link}: {err.strerror}.",
        ) from err
    _point_link(storage_root, hostname, version)


def _prune(storage_root: Path, hostname: str) -> None:
    current = _current(storage_root, hostname)
    versions = _versions(_pairs_dir(storage_root, hostname))
    for old in versions[:-PAIR_VERSIONS_KEEP]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)


def _check_pair(fullchain_pem: bytes, privkey_pem: bytes) -> None:
    leaf = _load_leaf(fullchain_pem)
    key = _load_key(privkey_pem)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise StorageError(
            "The private key does not match the certificate's public key; nothing was "
            "written and the previous certificate is still in place."
        )


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
    _migrate_plain_dir(root, hostname, pairs)
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
    """The version directory a rollback would restore, or None."""
    current = _current(storage_root, hostname)
    older = [
        v
        for v in _versions(_pairs_dir(storage_root, hostname))
        if current is None or v.name < current.name
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


def archive_host(storage_root: Path, hostname: str) -> Path | None:
    """Move a host's certificate material under ``archive/``; return where, or None.

    Nothing is deleted: versions go to ``<archive>/versions/`` and
    ``<archive>/current`` records which one was live.
    """
    root = Path(storage_root)
    link = _link(root, hostname)
    pairs = _pairs_dir(root, hostname)
    has_link = link.is_symlink() or link.exists()
    if not has_link and not pairs.exists():
        return None
    archive_root = ensure_dir(root / constants.ARCHIVE_DIRNAME, constants.PRIVATE_DIR_MODE)
    stamp, suffix = f"{hostname}-{_utc_stamp()}", 0
    while True:
        archive = archive_root / (f"{stamp}-{suffix}" if suffix else stamp)
        try:
            os.mkdir(archive, constants.PRIVATE_DIR_MODE)
            break
        except FileExistsError:
            suffix += 1
        except OSError as err:
            raise StorageError(f"Cannot create {archive}: {err.strerror}.") from err
    versions = archive / "versions"
    try:
        os.mkdir(versions, constants.PRIVATE_DIR_MODE)
        current = _current(root, hostname)
        if link.is_symlink():
            # Unlink first: from now on the host has no certificate, as removal intends.
            os.unlink(link)
        elif link.is_dir():
            os.rename(link, versions / "legacy")
            current = versions / "legacy"
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

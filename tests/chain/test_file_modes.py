"""Private keys 0600 in 0700 directories, on every path that writes them: issuance,
renewal, disable (the key is kept), delete (the key is archived). Only the webroot is
readable by nginx's workers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modoboa_pro.virtualhosts import constants, services

from ..conftest import Chain
from .test_failures import provision_active

pytestmark = pytest.mark.chain


def audit(root: Path) -> list[str]:
    """Every path under the storage root whose mode is looser than the rules allow."""
    problems = []
    webroot = root / constants.WEBROOT_DIRNAME
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            continue  # certs/<host> -> .pairs/<host>/<version>: the target is checked
        public = path == root or path == webroot or webroot in path.parents
        if public:
            # nginx's workers read tokens: traversable directories, readable files, no writes.
            allowed = constants.WEBROOT_DIR_MODE if path.is_dir() else constants.PUBLIC_FILE_MODE
            if path == root:
                allowed = constants.STORAGE_ROOT_MODE
            if mode & ~allowed:
                problems.append(f"{path.relative_to(root)} {oct(mode)} (at most {oct(allowed)})")
            continue
        if path.is_dir():
            if mode != constants.PRIVATE_DIR_MODE:
                problems.append(f"{path.relative_to(root)}/ {oct(mode)} (want 0o700)")
        elif path.name.endswith((".pem", ".key", ".json")) or "key" in path.name:
            private = path.name == constants.PRIVKEY_FILENAME or "key" in path.name
            if private and mode != constants.PRIVATE_FILE_MODE:
                problems.append(f"{path.relative_to(root)} {oct(mode)} (want 0o600)")
            if mode & 0o022:
                problems.append(f"{path.relative_to(root)} {oct(mode)} writable by others")
    return problems


def test_keys_stay_private_through_issuance_renewal_disable_and_delete(chain: Chain):
    root = chain.storage
    host = provision_active(chain, "modes.example.test")
    keys = list(root.rglob(constants.PRIVKEY_FILENAME))
    assert keys and audit(root) == []  # issuance (account key included)

    services.renew_now(host)
    chain.drain()
    assert len(list(root.rglob(constants.PRIVKEY_FILENAME))) == 2
    assert audit(root) == []  # renewal: the new key and the kept previous one

    services.set_enabled(host, False)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_DISABLED
    assert audit(root) == []  # disabled: the key stays, still private

    services.delete_virtualhost(host)
    chain.drain()
    archived = list((root / constants.ARCHIVE_DIRNAME).rglob(constants.PRIVKEY_FILENAME))
    assert archived
    assert audit(root) == []  # deleted: the archive is private too


def test_the_audit_sees_a_readable_key(tmp_path: Path):
    """The audit above can fail: a key or a directory opened up is reported."""
    pair = tmp_path / "certs" / ".pairs" / "x.example.test" / "000001"
    pair.mkdir(parents=True, mode=0o700)
    for directory in (tmp_path / "certs", tmp_path / "certs" / ".pairs", pair.parent, pair):
        directory.chmod(0o700)
    tmp_path.chmod(constants.STORAGE_ROOT_MODE)
    key = pair / constants.PRIVKEY_FILENAME
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    assert audit(tmp_path) == []
    key.chmod(0o644)
    pair.chmod(0o755)
    assert len(audit(tmp_path)) == 2

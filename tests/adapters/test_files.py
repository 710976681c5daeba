"""Tests for the files adapter: atomic writes, directory modes, safe hostnames."""

from __future__ import annotations

import os

import pytest

from modoboa_pro.virtualhosts.adapters import files
from modoboa_pro.virtualhosts.errors import InvalidHostname, StorageError

from .helpers import UNSAFE_HOSTNAMES, mode

# -- atomic_write / ensure_dir ------------------------------------------------


@pytest.mark.parametrize("file_mode", [0o600, 0o644])
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_atomic_write_sets_exact_mode(tmp_path, file_mode, umask):
    old = os.umask(umask)
    try:
        files.atomic_write(tmp_path / "f", b"data", file_mode)
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
        files.atomic_write(tmp_path / "key", b"secret", 0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f"
    files.atomic_write(target, b"one", 0o644)
    files.atomic_write(target, b"two", 0o644)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="left untouched") as info:
        files.atomic_write(target, b"new", 0o644)
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_into_missing_directory(tmp_path):
    with pytest.raises(StorageError, match="Cannot create a file"):
        files.atomic_write(tmp_path / "missing" / "f", b"x", 0o644)


def test_ensure_dir_creates_parents_and_fixes_mode(tmp_path):
    leaf = tmp_path / "a" / "b"
    files.ensure_dir(leaf, 0o755)
    assert leaf.is_dir() and mode(leaf) == 0o755
    files.ensure_dir(leaf, 0o700)  # an existing directory is tightened
    assert mode(leaf) == 0o700


# -- hostnames ----------------------------------------------------------------


@pytest.mark.parametrize("hostname", UNSAFE_HOSTNAMES)
def test_unsafe_hostnames_are_refused(hostname):
    with pytest.raises(InvalidHostname):
        files.safe_hostname(hostname)


@pytest.mark.parametrize("hostname", ["example.org", "a-b.c-d.example", "XN--bcher-kva.example"])
def test_safe_hostnames_pass(hostname):
    assert files.safe_hostname(hostname) == hostname


# -- temporary names ------------------------------------------------------------


def test_temporary_names_are_hidden_unique_and_of_one_length():
    first, second = files.temp_name("a.example.conf"), files.temp_name("a.example.conf")
    assert first != second
    assert first.startswith(".a.example.conf.") and first.endswith(files.TEMP_SUFFIX)
    assert files.temp_name("x", ".link").endswith(".link")
    # What hostnames.py measures is what atomic_write creates.
    assert len(first) == len(files.longest_temp_name("a.example.conf"))


def test_create_exclusive_never_replaces_what_another_process_created(tmp_path):
    path = tmp_path / "private_key.json"
    assert files.create_exclusive(path, b"first", 0o600) is True
    assert files.create_exclusive(path, b"second", 0o600) is False
    assert path.read_bytes() == b"first" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private_key.json"]  # no temp left

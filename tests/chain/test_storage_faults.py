"""Storage that cannot take a certificate: refused before ordering, so no CA quota is spent."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_failures import provision_and_fail, retry_and_succeed

pytestmark = pytest.mark.chain


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """Make ``directory`` refuse new files; yield the error the worker will meet.

    As root permissions do not stop writes, so the directory becomes a full tmpfs
    (ENOSPC, what a full disk gives); otherwise it is made read-only (EACCES).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield "Permission denied"
        finally:
            directory.chmod(0o700)
        return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(directory)], check=True
    )
    try:
        # Fill it: the last write fails once the 64 KiB are used.
        with contextlib.suppress(OSError), open(directory / "filler", "wb") as filler:
            filler.write(b"\0" * 128 * 1024)
        yield "No space left on device"
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def challenge_requests(chain: Chain, hostname: str) -> int:
    """How often the CA fetched a challenge for ``hostname`` (one per validation)."""
    return sum(
        1
        for entry in chain.nginx.access_log_entries()
        if entry.host == hostname and entry.uri.startswith("/.well-known/acme-challenge/")
        and "Pebble" in entry.user_agent
    )


def test_a_full_certificate_directory_fails_before_any_order(chain: Chain):
    hostname = "full.example.test"
    with unwritable(chain.storage / "certs") as reason:
        host = provision_and_fail(chain, hostname)
        assert host.failed_step == constants.STEP_ORDER
        assert f"Certificates for {hostname} cannot be stored" in host.last_error
        assert reason in host.last_error
        assert "No certificate was ordered" in host.last_error
        assert host.next_attempt_at is not None  # retried with back-off, at no CA cost
        # The CA was never asked to validate the name: no order, no quota spent.
        assert challenge_requests(chain, hostname) == 0
    retry_and_succeed(chain, VirtualHost.objects.get(pk=host.pk))
    assert challenge_requests(chain, hostname) >= 1
    # The probes left nothing behind.
    pairs = chain.storage / "certs" / ".pairs" / hostname
    assert [p.name for p in pairs.iterdir() if p.name.startswith(".")] == []

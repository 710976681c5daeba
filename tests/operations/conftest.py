"""Operations tests share the deployed instance with the browser tests: each leaves it as
it found it (its hosts deleted, their sites gone)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ..deployment import Stack

CLEANUP_TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def _delete_created_hosts(stack: Stack) -> Iterator[None]:
    before = {h["id"] for h in stack.api.virtualhosts()}
    yield
    created = [h for h in stack.api.virtualhosts() if h["id"] not in before]
    for host in created:
        stack.api._call("DELETE", f"virtualhosts/{host['id']}/")
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    names = {f"{h['hostname']}.conf" for h in created}
    while time.monotonic() < deadline:
        if not names & {p.name for p in stack.nginx.sites_dir.iterdir()}:
            return
        time.sleep(0.5)
    raise AssertionError(f"sites of deleted hosts still there after {CLEANUP_TIMEOUT:.0f}s")

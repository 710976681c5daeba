"""The local reloader's claim on "reloading now", against the test redis-server."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from modoboa_pro.virtualhosts.adapters import locks
from modoboa_pro.virtualhosts.adapters.reloader import LocalReloader, ReloadBook
from modoboa_pro.virtualhosts.errors import NginxReloadFailed

# Stand-ins for `nginx -t` and `nginx -s reload`: these tests are about who may run them.
TRUE = ["true"]


@pytest.fixture
def connection(redis_server) -> redis.Redis:
    return redis_server.client()


def claim_running(connection: redis.Redis, pid: int) -> None:
    """``running`` as process ``pid`` takes it to reload: for minutes."""
    value = f"{'0' * 16} 2026-01-01T00:00:00+00:00 {locks.this_machine()} {pid}"
    connection.set(ReloadBook(connection).running, value, px=300_000)


def test_a_reload_claimed_by_a_dead_worker_does_not_wait_for_its_ttl(connection):
    dead = subprocess.Popen(["true"])  # SIGKILLed while reloading: it never released the claim
    dead.wait()
    claim_running(connection, dead.pid)
    started = time.monotonic()
    LocalReloader(TRUE, TRUE, connection, timeout=30, min_interval=0)()
    assert time.monotonic() - started < 5
    assert not connection.exists(ReloadBook(connection).running)


def test_a_reload_claimed_by_a_live_process_is_waited_for(connection):
    claim_running(connection, 1)  # init: alive
    with pytest.raises(NginxReloadFailed, match="Another process has been reloading"):
        LocalReloader(TRUE, TRUE, connection, timeout=0.5, min_interval=0)()

"""Tests for the per-host Redis lock, against a private redis-server."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from modoboa_pro.virtualhosts.adapters import locks
from modoboa_pro.virtualhosts.errors import LockHeld, LockUnavailable

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

pytestmark = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER), reason="redis-server is not installed"
)

HOST = "mail.example.org"
MINUTE = datetime.timedelta(minutes=1)


@pytest.fixture
def connection(tmp_path) -> Iterator[redis.Redis]:
    """A redis-server of our own: unix socket only, no persistence, stopped by PID."""
    sock = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(tmp_path),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        assert client.dbsize() == 0  # never run against a Redis with data in it
        yield client
    finally:
        client.close()
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def test_acquire_and_release(connection):
    assert not locks.is_locked(connection, HOST)
    with locks.HostLock(connection, HOST, MINUTE) as lock:
        assert locks.is_locked(connection, HOST)
        key = "modoboa_pro:virtualhosts:lock:" + HOST
        assert connection.exists(key)
        assert 55_000 < connection.pttl(key) <= 60_000
        assert lock.token
    assert not locks.is_locked(connection, HOST)


def test_contention_names_host_and_start(connection):
    with locks.HostLock(connection, HOST, MINUTE):
        with pytest.raises(LockHeld, match=f"Another run for {HOST} is in progress") as info:
            with locks.HostLock(connection, HOST, MINUTE):
                pytest.fail("entered a held lock")
        assert "started 20" in str(info.value)  # an ISO timestamp
        assert info.value.retryable is True
        # The failed attempt must not have released the holder's lock.
        assert locks.is_locked(connection, HOST)
    assert not locks.is_locked(connection, HOST)


def test_locks_are_per_host(connection):
    with locks.HostLock(connection, HOST, MINUTE), locks.HostLock(connection, "b.example", MINUTE):
        assert locks.is_locked(connection, "b.example")


def test_lock_released_when_block_raises(connection):
    with pytest.raises(RuntimeError), locks.HostLock(connection, HOST, MINUTE):
        raise RuntimeError("boom")
    assert not locks.is_locked(connection, HOST)


def test_expiry(connection):
    lock = locks.HostLock(connection, HOST, datetime.timedelta(milliseconds=150))
    lock.acquire()
    time.sleep(0.3)
    assert not locks.is_locked(connection, HOST)
    locks.HostLock(connection, HOST, MINUTE).acquire()  # free for the next run


def test_expired_holder_does_not_delete_the_new_holders_lock(connection):
    first = locks.HostLock(connection, HOST, datetime.timedelta(milliseconds=100))
    first.acquire()
    time.sleep(0.25)
    second = locks.HostLock(connection, HOST, MINUTE)
    second.acquire()

    assert first.release() is False
    assert locks.is_locked(connection, HOST)
    assert second.release() is True
    assert not locks.is_locked(connection, HOST)


def test_waiting_acquires_once_the_holder_releases(connection):
    holder = locks.HostLock(connection, HOST, MINUTE)
    holder.acquire()
    releaser = threading.Timer(0.5, holder.release)
    releaser.start()
    try:
        start = time.monotonic()
        with locks.HostLock(connection, HOST, MINUTE, wait=datetime.timedelta(seconds=2)) as lock:
            waited = time.monotonic() - start
            assert lock.token
            assert locks.is_locked(connection, HOST)
    finally:
        releaser.cancel()
        releaser.join()
    assert 0.4 <= waited < 2
    assert holder.token == ""  # released by the holder, not taken over
    assert not locks.is_locked(connection, HOST)


def test_waiting_gives_up_while_the_holder_keeps_the_lock(connection):
    key = locks.lock_key(HOST)
    with locks.HostLock(connection, HOST, MINUTE) as holder:
        value = connection.get(key)
        start = time.monotonic()
        with pytest.raises(LockHeld, match=f"Another run for {HOST} is in progress"):
            locks.HostLock(connection, HOST, MINUTE, wait=datetime.timedelta(seconds=0.3)).acquire()
        assert 0.3 <= time.monotonic() - start < 2
        # The holder's lock is intact: same value, TTL not reset or dropped.
        assert connection.get(key) == value
        assert 55_000 < connection.pttl(key) <= 60_000
        assert holder.release() is True
    assert not locks.is_locked(connection, HOST)


def test_works_with_decoded_responses(connection):
    kwargs = connection.connection_pool.connection_kwargs
    decoded = redis.Redis(unix_socket_path=kwargs["path"], decode_responses=True)
    try:
        with locks.HostLock(decoded, HOST, MINUTE):
            with pytest.raises(LockHeld, match="started 20"):
                locks.HostLock(decoded, HOST, MINUTE).acquire()
        assert not locks.is_locked(decoded, HOST)
    finally:
        decoded.close()


def test_unreachable_redis(tmp_path):
    # No retries: redis-py's default backoff only slows the test down.
    dead = redis.Redis(unix_socket_path=str(tmp_path / "nothing.sock"), retry=Retry(NoBackoff(), 0))
    with pytest.raises(LockUnavailable, match="Cannot reach Redis") as info:
        locks.HostLock(dead, HOST, MINUTE).acquire()
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(LockUnavailable):
        locks.is_locked(dead, HOST)


def test_ttl_must_be_positive(connection):
    with pytest.raises(ValueError):
        locks.HostLock(connection, HOST, datetime.timedelta(0))


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _zombie_pid() -> Iterator[int]:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    yield child.pid
    child.wait()


def _held_by(connection: redis.Redis, machine: str, pid: int) -> None:
    value = f"deadbeef 2026-11-29T03:00:00+00:00 {machine} {pid}"
    connection.set(locks.lock_key(HOST), value, px=60_000)


def test_the_lock_of_a_dead_process_is_released(connection):
    _held_by(connection, locks.this_machine(), _dead_pid())
    assert locks.is_locked(connection, HOST) is False
    assert connection.get(locks.lock_key(HOST)) is None
    with locks.HostLock(connection, HOST, MINUTE):
        assert locks.is_locked(connection, HOST)


def test_a_dead_holder_does_not_make_a_run_wait(connection):
    _held_by(connection, locks.this_machine(), _dead_pid())
    lock = locks.HostLock(connection, HOST, MINUTE)
    lock.acquire()  # no LockHeld: the holder is gone
    assert lock.token.endswith(f" {locks.this_machine()} {os.getpid()}")
    lock.release()


def test_an_unreaped_zombie_counts_as_dead(connection):
    for pid in _zombie_pid():
        _held_by(connection, locks.this_machine(), pid)
        assert locks.is_locked(connection, HOST) is False


def test_a_live_holder_or_one_on_another_machine_keeps_the_lock(connection):
    _held_by(connection, locks.this_machine(), os.getpid())
    assert locks.is_locked(connection, HOST)
    _held_by(connection, "another-machine", _dead_pid())  # cannot be checked from here
    assert locks.is_locked(connection, HOST)
    # A value written by an older release names no process: only its TTL ends it.
    connection.set(locks.lock_key(HOST), "deadbeef 2026-11-29T03:00:00+00:00", px=60_000)
    assert locks.is_locked(connection, HOST)
    with pytest.raises(LockHeld, match="started 2026-11-29T03:00:00"):
        locks.HostLock(connection, HOST, MINUTE).acquire()

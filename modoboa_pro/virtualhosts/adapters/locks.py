"""Per-host locks in Redis, so two runs never work on the same host at once."""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType

import redis

from ..errors import LockHeld, LockUnavailable

LOCK_KEY_PREFIX = "modoboa_pro:virtualhosts:lock:"

logger = logging.getLogger(__name__)

# How often a waiting run checks whether the holder has finished.
WAIT_POLL_INTERVAL = 0.1

# Compare-and-delete: only the holder of the token may delete the key, so a run
# whose lock expired never frees the lock of the run that took over.
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


def lock_key(name: str) -> str:
    return LOCK_KEY_PREFIX + name


def _text(value: bytes | str | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value or ""


def this_machine() -> str:
    """This machine's name as RQ records it for workers (no spaces: it goes in lock values)."""
    return socket.gethostname().replace(" ", "_")


def process_gone(machine: str | None, pid: int | None) -> bool:
    """True when ``pid`` on ``machine`` is known to be dead.

    Only a process of this machine can be checked; any other (or an unknown one) is
    presumed alive, and its lock then ends with its TTL as before.
    """
    if not machine or not pid or machine != this_machine():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that exited and was never reaped: an orphan whose new parent (a
    container's PID 1 that is not an init) never waits for it. Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state in (["Z"], ["X"])


def holder_value(token: str) -> str:
    """``<token> <start time> <machine> <pid>``: a lock value naming this process."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return f"{token} {started} {this_machine()} {os.getpid()}"


def holder_gone(value: bytes | str | None) -> bool:
    """Whether the process a ``holder_value`` names is known to be dead."""
    _, machine, pid = _holder(value)
    return process_gone(machine, pid)


def _holder(value: bytes | str | None) -> tuple[str, str, int | None]:
    """``(start time, machine, pid)`` of a lock value ``<token> <start> <machine> <pid>``."""
    parts = _text(value).split(" ")
    started = parts[1] if len(parts) > 1 else ""
    if len(parts) < 4 or not parts[3].isdigit():
        return started, "", None  # a value from an older release: no holder known
    return started, parts[2], int(parts[3])


def _break_if_dead(connection: redis.Redis, name: str, value: bytes | str | None) -> bool:
    """Delete the lock if its holder died (SIGKILL, OOM) without releasing it."""
    if value is None:
        return False
    started, machine, pid = _holder(value)
    if not process_gone(machine, pid):
        return False
    if connection.eval(_RELEASE, 1, lock_key(name), value):
        logger.warning(
            "The lock for %s was held by process %s, which died (run started %s): released",
            name,
            pid,
            started,
        )
    return True


def _milliseconds(ttl: datetime.timedelta) -> int:
    ms = int(ttl.total_seconds() * 1000)
    if ms <= 0:
        raise ValueError(f"a lock TTL must be positive, got {ttl}")
    return ms


def is_locked(connection: redis.Redis, name: str) -> bool:
    """Whether a live run holds the lock ``name`` (a dead holder's lock is released)."""
    try:
        value = connection.get(lock_key(name))
        return value is not None and not _break_if_dead(connection, name, value)
    except redis.RedisError as err:
        raise LockUnavailable(f"Cannot reach Redis to check the lock for {name}: {err}.") from err


class HostLock:
    """``with HostLock(conn, hostname, ttl):`` holds the host's lock for the block.

    The value stored is ``<token> <start time> <machine> <pid>``: the token proves
    ownership, the start time tells a blocked operator how old the other run is, and
    the process lets a later run see that the holder died without releasing it (a
    worker killed mid-run), instead of waiting for the TTL.
    """

    def __init__(
        self,
        connection: redis.Redis,
        name: str,
        ttl: datetime.timedelta,
        *,
        wait: datetime.timedelta = datetime.timedelta(0),
    ) -> None:
        self.connection = connection
        self.name = name
        self.key = lock_key(name)
        self.ttl_ms = _milliseconds(ttl)
        self.wait = wait.total_seconds()
        self.token = ""

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` for its holder to finish, or raise LockHeld."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                self._try_acquire()
                return
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(WAIT_POLL_INTERVAL)

    def _try_acquire(self) -> None:
        value = holder_value(secrets.token_hex(16))
        try:
            taken = self.connection.set(self.key, value, nx=True, px=self.ttl_ms)
            holder = None if taken else self.connection.get(self.key)
            if holder is not None and _break_if_dead(self.connection, self.name, holder):
                taken = self.connection.set(self.key, value, nx=True, px=self.ttl_ms)
                holder = None if taken else self.connection.get(self.key)
        except redis.RedisError as err:
            raise LockUnavailable(
                f"Cannot reach Redis to lock {self.name}: {err}. Check the Redis server "
                "the workers use; the run will be retried.",
            ) from err
        if not taken:
            since = _holder(holder)[0] or "moments ago"
            raise LockHeld(
                f"Another run for {self.name} is in progress (started {since}); this one "
                "stops to let it finish."
            )
        self.token = value

    def release(self) -> bool:
        """Drop the lock if this run still owns it; return whether it did."""
        if not self.token:
            return False
        try:
            released = bool(self.connection.eval(_RELEASE, 1, self.key, self.token))
        except redis.RedisError as err:
            # The key expires by itself; failing the run for this would hide its real outcome.
            logger.warning("Cannot release the lock for %s (it will expire): %s", self.name, err)
            return False
        finally:
            self.token = ""
        if not released:
            logger.warning(
                "The lock for %s was gone before the run ended (expired, or lost with a Redis "
                "restart)",
                self.name,
            )
        return released

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

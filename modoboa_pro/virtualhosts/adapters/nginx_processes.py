"""Know when an nginx reload has taken over, from the master's worker processes in /proc.

``nginx -s reload`` (and ``systemctl reload nginx``) return once the master got the
signal. The master then reads the configuration, starts new workers, sleeps 100 ms, and
only then tells the old workers to stop: meanwhile both generations accept connections,
so a probe can see the new certificate five times in a row and the next browser the old
one. The reload has taken over once every old worker has exited or retitled itself
"... is shutting down", which nginx does just before closing its listening sockets.

Everything read here is world-readable in /proc: no privilege needed, nothing written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
# How long a master may take to read its configuration and replace its workers. Thousands
# of sites with their certificates take a few seconds; a master that refused the new
# configuration (a port it cannot bind) never replaces them.
TAKEOVER_TIMEOUT = 30.0
# Each look reads the master's children list and their status: a few system calls.
POLL_INTERVAL = 0.005
_MASTER_TITLE = b"nginx: master process"
_RETIRING_TITLE = b"is shutting down"


class Worker(NamedTuple):
    """A child of the master; its start time tells it apart from a later one with its PID."""

    pid: int
    started: int  # clock ticks after boot, /proc/<pid>/stat field 22


def read_master(pid_file: Path) -> int | None:
    """The PID in nginx's pid file if it is a running nginx master, else None.

    A stale pid file may name a PID reused by another program: its children are not
    nginx's workers, so it must not be mistaken for the master.
    """
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _cmdline(pid).startswith(_MASTER_TITLE) else None


def workers(master: int) -> set[Worker]:
    """The master's children: its workers (and cache processes, if any)."""
    pids = _children(master)
    candidates = (PROC / str(pid) / "stat" for pid in pids) if pids is not None else None
    children = set()
    for stat in candidates if candidates is not None else PROC.glob("[0-9]*/stat"):
        try:
            # The command name may hold spaces and parentheses: split after the last ")".
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # Fields after the name, from 0: state, ppid, ... start time at 19.
        if len(fields) > 19 and fields[1] == str(master):
            children.add(Worker(int(stat.parent.name), int(fields[19])))
    return children


def _children(master: int) -> set[int] | None:
    """The master's children as its threads list them (``/proc/PID/task/TID/children``), or
    None where the kernel keeps no such lists (then every process is looked at)."""
    task = PROC / str(master) / "task"
    if not (task / str(master) / "children").exists():
        return None
    pids: set[int] = set()
    try:
        for listing in task.glob("*/children"):
            pids.update(int(pid) for pid in listing.read_text().split())
    except (OSError, ValueError):
        return None
    return pids


def is_retiring(worker: Worker) -> bool:
    """Whether a worker no longer accepts connections: exited, or shutting down."""
    title = _cmdline(worker.pid)
    # A process that exited has no command line (a zombie has an empty one).
    return not title or _RETIRING_TITLE in title


def wait_for_takeover(master: int, old: set[Worker], timeout: float) -> bool:
    """Wait until new workers run and none of the ``old`` ones accepts any more.

    Returns False when that did not happen within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        current = workers(master)
        if current - old and all(is_retiring(worker) for worker in old & current):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _cmdline(pid: int) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""

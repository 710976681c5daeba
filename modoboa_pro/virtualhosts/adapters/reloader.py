"""Apply nginx configuration changes: `nginx -t`, then reload.

Two implementations of one callable: ``LocalReloader`` runs the commands in
this process; ``PrivilegedReloader`` asks Modoboa's root worker (the
``privileged`` queue) to do it, and waits for its verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import NginxConfigTestFailed, NginxError, NginxReloadFailed
from . import nginx

POLL_INTERVAL = 0.05


class Reloader(Protocol):
    def __call__(self) -> str: ...


class LocalReloader:
    """Test and reload in this process (the worker may run nginx itself)."""

    def __init__(self, test_argv: Sequence[str], reload_argv: Sequence[str]) -> None:
        self.test_argv = list(test_argv)
        self.reload_argv = list(reload_argv)

    def __call__(self) -> str:
        return nginx.test_and_reload(self.test_argv, self.reload_argv)


def outcome_of(func: Callable[[], str]) -> dict[str, Any]:
    """Run ``func`` and describe its outcome as plain data (for a job's return value)."""
    try:
        return {"ok": True, "output": func()}
    except NginxError as err:
        kind = "test" if isinstance(err, NginxConfigTestFailed) else "reload"
        return {"ok": False, "kind": kind, "message": err.message, "output": err.output}


def raise_for_outcome(outcome: dict[str, Any]) -> str:
    """Turn an outcome dict back into the matching exception, or return the output."""
    if outcome.get("ok"):
        return str(outcome.get("output", ""))
    cls = NginxConfigTestFailed if outcome.get("kind") == "test" else NginxReloadFailed
    raise cls(str(outcome.get("message")), output=str(outcome.get("output", "")))


class PrivilegedReloader:
    """Enqueue the argument-less test-and-reload job on the privileged queue and wait."""

    def __init__(self, queue: Any, job_func: Callable[[], dict], timeout: float) -> None:
        self.queue = queue
        self.job_func = job_func
        self.timeout = timeout

    def __call__(self) -> str:
        job = self.queue.enqueue(self.job_func, job_timeout=max(int(self.timeout), 30))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            status = job.get_status(refresh=True)
            if status == "finished":
                return raise_for_outcome(job.return_value() or {})
            if status in ("failed", "stopped", "canceled"):
                raise NginxReloadFailed(
                    "The privileged worker failed to run the nginx test and reload "
                    f"(job {job.id} {status}); see its log. "
                    "nginx keeps its previous configuration.",
                    retryable=True,
                )
            time.sleep(POLL_INTERVAL)
        raise NginxReloadFailed(
            f"No privileged worker ran the nginx reload within {self.timeout:.0f} s. Make sure "
            "Modoboa's privileged RQ worker (running as root) is started.",
            retryable=True,
        )

"""Follow virtual hosts until they settle, printing each history step as it appears."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modoboa_pro.demo.client import ModoboaApi
from modoboa_pro.demo.console import Console
from modoboa_pro.demo.instance import ModoboaInstance

# Statuses after which a run is over (constants.STATUS_*; "pending" and "provisioning" are not).
SETTLED = ("active", "failed", "http_only", "disabled")
POLL_INTERVAL = 0.2
# The serializer may expose a host's recent steps under either name.
_HISTORY_KEYS = ("history", "events")
_STEP_LABELS = {
    "http_site": "HTTP-only site",
    "account": "ACME account",
    "order": "certificate order",
    "store": "certificate stored",
    "https_site": "HTTPS site",
    "verify": "served cert verified",
    "remove": "site removed",
    "renew": "renewal",
}


@dataclass(frozen=True)
class Step:
    key: str
    step: str
    outcome: str
    started_at: str
    duration: float
    message: str


def _step(raw: dict[str, Any], key: str) -> Step:
    return Step(
        key=key,
        step=str(raw.get("step", "")),
        outcome=str(raw.get("outcome", "")),
        started_at=str(raw.get("started_at", "")),
        duration=float(raw.get("duration") or 0.0),
        message=str(raw.get("message", "")),
    )


def steps_from_api(payload: dict[str, Any]) -> list[Step] | None:
    """The host's history as the API returns it, oldest first; None if the API has none."""
    for name in _HISTORY_KEYS:
        entries = payload.get(name)
        if isinstance(entries, list):
            steps = [
                _step(e, f"{e.get('run_id', '')}/{e.get('step')}/{e.get('started_at')}")
                for e in entries
                if isinstance(e, dict)
            ]
            return sorted(steps, key=lambda s: s.started_at)
    return None


class DatabaseHistory:
    """Fallback when the API does not expose history: read the instance's event table."""

    def __init__(self, instance: ModoboaInstance) -> None:
        self.instance = instance
        self._ready = False

    def _setup(self) -> None:
        if self._ready:
            return
        # Load the instance's own settings in this process, read-only.
        sys.path.insert(0, str(self.instance.project_dir))
        os.environ["DJANGO_SETTINGS_MODULE"] = f"{self.instance.name}.settings"
        import django

        django.setup()
        self._ready = True

    def steps(self, host_id: int) -> list[Step]:
        self._setup()
        from modoboa_pro.virtualhosts.models import VirtualHostEvent

        events = VirtualHostEvent.objects.filter(virtualhost_id=host_id).order_by(
            "started_at", "id"
        )
        return [
            _step(
                {
                    "step": e.step,
                    "outcome": e.outcome,
                    "started_at": e.started_at.isoformat(),
                    "duration": e.duration,
                    "message": e.message,
                },
                str(e.pk),
            )
            for e in events
        ]


def format_step(hostname: str, width: int, step: Step) -> str:
    label = _STEP_LABELS.get(step.step, step.step)
    outcome = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}.get(step.outcome, step.outcome)
    return (
        f"{hostname.ljust(width)}  {label:<20}  {outcome:<7}  {step.duration:6.2f}s  {step.message}"
    )


def follow(
    console: Console,
    api: ModoboaApi,
    hosts: Sequence[dict[str, Any]],
    fallback: DatabaseHistory,
    *,
    timeout: float,
    on_wait: Callable[[], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Poll every host until it settles (or ``timeout``); return the last payload of each."""
    width = max(len(h["hostname"]) for h in hosts)
    seen: dict[int, set[str]] = {h["id"]: set() for h in hosts}
    latest: dict[int, dict[str, Any]] = {h["id"]: h for h in hosts}
    status: dict[int, str] = {}
    used_fallback = False
    began = time.monotonic()
    deadline = began + timeout
    while True:
        for host in hosts:
            host_id = host["id"]
            payload = api.virtualhost(host_id)
            latest[host_id] = payload
            steps = steps_from_api(payload)
            if steps is None:
                if not used_fallback:
                    console.info("(this API has no history field: reading steps from the database)")
                    used_fallback = True
                steps = fallback.steps(host_id)
            for step in steps:
                if step.key not in seen[host_id]:
                    seen[host_id].add(step.key)
                    console.info(format_step(payload["hostname"], width, step))
            if payload["status"] != status.get(host_id) and payload["status"] in SETTLED:
                line = (
                    f"{payload['hostname'].ljust(width)}  => {payload['status']} "
                    f"({time.monotonic() - began:.1f}s after creation)"
                )
                if payload["status"] == "failed" and payload.get("last_error"):
                    line += f": {payload['last_error']}"
                console.info(line)
            status[host_id] = payload["status"]
        if all(s in SETTLED for s in status.values()):
            return latest
        if time.monotonic() > deadline:
            return latest
        if on_wait is not None:
            on_wait()
        time.sleep(POLL_INTERVAL)

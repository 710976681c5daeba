"""Scenario 5: N hosts that serve mail renewed by one scan, deployed to real Postfix and Dovecot.

Its own stack (the demo instance with the mail settings appended to its settings.py, pointed
at a Postfix and a Dovecot of the test harness: own config dirs, free loopback ports, stopped
by PID; the system's /etc/postfix and /etc/dovecot are never touched). N mail hosts and N web
hosts (the baseline) are created through the API and the real workers; then the web hosts are
made due and renewed by one scan, then the mail hosts the same way. Measured for each burst:
until every host's new certificate is served by nginx, until every mail port presents it for
every mail host (SNI), until every host is active again (its run, mail_verify included, done),
and the reloads of nginx, Postfix and Dovecot (their own logs, and the metrics' counters).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rq import Queue

from bench.burst import THREADS, _create_all, _floor_burst, _make_due
from bench.issuance import Floor
from bench.probe import served_serial
from bench.stack import BenchStack
from modoboa_pro.testing.mail import DovecotServer, PostfixServer
from modoboa_pro.virtualhosts.adapters import counters, mailprobe
from modoboa_pro.virtualhosts.errors import MailNotVerified

MAIL_PREFIX = "ml"
WEB_PREFIX = "wb"
BINARIES = ("postfix", "postmap", "dovecot", "doveconf", "doveadm")
# Between rounds of handshakes and database reads while waiting: the workers need the CPU.
POLL_SECONDS = 0.05
TIMEOUT = 600.0
PROBE_TIMEOUT = 2.0  # one handshake with a mail port
SERVICES = ("nginx", "postfix", "dovecot")


def _sbin(name: str) -> str:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def missing_binaries() -> list[str]:
    """The mail programs this scenario needs that the machine does not have."""
    return [b for b in BINARIES if _sbin(b) == b]


@contextmanager
def mail_servers() -> Iterator[tuple[PostfixServer, DovecotServer]]:
    """A Postfix and a Dovecot of the test harness, stopped by PID on the way out."""
    postfix = PostfixServer()
    postfix.start()
    try:
        dovecot = DovecotServer()
        dovecot.start()
        try:
            yield postfix, dovecot
        finally:
            dovecot.stop()
    finally:
        postfix.stop()


class Watch:
    """What the operator would look at, read from the outside: nginx's and the mail ports'
    certificates by handshake, the hosts' status and serial from the instance's database
    (read-only, no Django start-up), and each service's reload count."""

    def __init__(self, stack: BenchStack, pf: PostfixServer, dv: DovecotServer) -> None:
        self.stack, self.pf, self.dv = stack, pf, dv
        self.ports = {**pf.ports, **dv.ports}
        self.database = stack.demo.instance.database

    def hosts(self, prefix: str) -> dict[str, tuple[str, str]]:
        """hostname -> (status, cert_serial) of the hosts named ``prefix``*."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=20) as db:
            rows = db.execute(
                "SELECT hostname, status, cert_serial FROM virtualhosts_virtualhost "
                "WHERE hostname LIKE ?",
                (prefix + "%",),
            ).fetchall()
        return {name: (status, serial) for name, status, serial in rows}

    def presented(self, hostname: str, service: str) -> str | None:
        try:
            port = self.ports[service]
            return mailprobe.fetch("127.0.0.1", port, service, hostname, PROBE_TIMEOUT).serial
        except MailNotVerified:
            return None

    def reloads(self) -> dict[str, int]:
        """Each service's reloads in its own log."""
        return {
            "nginx": self.stack.reloads_since(0),
            "postfix": self.pf.reloads(),
            "dovecot": self.dv.reloads(),
        }

    def counted(self) -> dict[str, int]:
        """modoboa_reloads_total{outcome="ok"} per service, as the metrics read it."""
        snapshot = counters.read(self.stack.demo.redis.client())
        return {s: snapshot.reloads.get((s, counters.OUTCOME_OK), 0) for s in SERVICES}

    def wait(
        self, names: list[str], prefix: str, old: Mapping[str, str], *, mail: bool, began: float
    ) -> dict[str, float]:
        """Seconds since ``began`` until nginx serves a new certificate for every name
        (``web_served_s``), until every mail port presents it (``mail_presented_s``, with
        ``mail``), until every host is active with it (``all_active_s``). One thread each:
        a slow handshake of one must not delay the others' clocks."""
        watchers = {
            "web_served_s": lambda: self._nginx_serves(names, old),
            "all_active_s": lambda: self._active(names, prefix, old),
        }
        if mail:
            watchers["mail_presented_s"] = lambda: self._mail_presents(names, prefix, old)
        with ThreadPoolExecutor(len(watchers)) as pool:
            done = {key: pool.submit(_timed, func, began) for key, func in watchers.items()}
            return {key: future.result() for key, future in done.items()}

    def _nginx_serves(self, names: list[str], old: Mapping[str, str]) -> None:
        pending = set(names)
        deadline = time.monotonic() + TIMEOUT
        while _still(pending, "not served by nginx", deadline):
            for name in sorted(pending):
                serial = served_serial(self.stack.nginx.https_port, name)
                if serial is not None and serial != _as_int(old.get(name)):
                    pending.discard(name)

    def _mail_presents(self, names: list[str], prefix: str, old: Mapping[str, str]) -> None:
        """Until every port presents, for every name, the serial the host now records
        (a port answers an unknown name with its default certificate: not that)."""
        pending = {(name, service) for name in names for service in self.ports}
        deadline = time.monotonic() + TIMEOUT
        while _still(pending, "mail ports not presenting the new certificate", deadline):
            recorded = {name: serial for name, (_, serial) in self.hosts(prefix).items()}
            for name, service in sorted(pending):
                new = recorded.get(name)
                if new and new != old.get(name) and self.presented(name, service) == new:
                    pending.discard((name, service))

    def _active(self, names: list[str], prefix: str, old: Mapping[str, str]) -> None:
        pending = set(names)
        deadline = time.monotonic() + TIMEOUT
        while _still(pending, "hosts not active again", deadline):
            for name, (status, serial) in self.hosts(prefix).items():
                if name in pending and status == "failed":
                    raise RuntimeError(f"{name} failed during the bench: see its history")
                if status == "active" and serial and serial != old.get(name):
                    pending.discard(name)


def _timed(func: Callable[[], None], began: float) -> float:
    func()
    return round(time.monotonic() - began, 2)


def _still(pending: set[Any], what: str, deadline: float) -> bool:
    """Whether to go on: ``pending`` not empty (after a pause between rounds, which the
    workers need on 2 cores); TimeoutError past ``deadline``."""
    if not pending:
        return False
    if time.monotonic() > deadline:
        raise TimeoutError(f"after {TIMEOUT:.0f}s: {len(pending)} {what}")
    time.sleep(POLL_SECONDS)
    return True


def _scan(stack: BenchStack) -> float:
    """The daily job, enqueued once and run by a worker; its own duration."""
    began = time.monotonic()
    job = Queue("modoboa", connection=stack.demo.redis.client()).enqueue(
        "modoboa_pro.virtualhosts.jobs.check_certificate_renewals"
    )
    while job.get_status(refresh=True) not in ("finished", "failed"):
        time.sleep(0.01)
    return time.monotonic() - began


def _burst(watch: Watch, names: list[str], prefix: str, *, mail: bool) -> dict[str, object]:
    """Create ``names`` (marked for mail or not) at once; until all served and active."""
    reloads, counted = watch.reloads(), watch.counted()
    began = time.monotonic()
    statuses = _create_all(watch.stack, names, serves_mail=mail)
    took = watch.wait(names, prefix, {}, mail=mail, began=began)
    return {
        "error_answers": sum(1 for s in statuses if s != 201),
        **took,
        "wall_s": round(time.monotonic() - began, 2),
        **_deltas(watch, reloads, counted),
    }


def _renewal(watch: Watch, names: list[str], prefix: str, *, mail: bool) -> dict[str, object]:
    """Make ``prefix``* due, one scan; until every certificate is new everywhere."""
    old = {name: serial for name, (_, serial) in watch.hosts(prefix).items()}
    orders_before = sum(watch.stack.orders_per_host(prefix).values())
    due = _make_due(watch.stack, prefix)
    reloads, counted = watch.reloads(), watch.counted()
    began = time.monotonic()
    scanned = _scan(watch.stack)
    took = watch.wait(names, prefix, old, mail=mail, began=began)
    wall = time.monotonic() - began
    orders = watch.stack.orders_per_host(prefix)
    return {
        "made_due": due,
        "scan_job_s": round(scanned, 2),
        **took,
        "wall_s": round(wall, 2),
        **_deltas(watch, reloads, counted),
        "ca_orders": sum(orders.values()) - orders_before,
        "hosts_not_at_two_orders": sum(1 for n in orders.values() if n != 2),
    }


def _deltas(
    watch: Watch, reloads: Mapping[str, int], counted: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    now, now_counted = watch.reloads(), watch.counted()
    return {
        "reloads_in_logs": {s: now[s] - reloads[s] for s in SERVICES},
        "reloads_in_metrics": {s: now_counted[s] - counted[s] for s in SERVICES},
    }


def ratios(out: Mapping[str, object]) -> dict[str, float]:
    """The mail renewals against the same renewals of web hosts, in the same run."""
    mail, web, floor = out["renew_mail"], out["renew_web"], out.get("floor_renew")
    assert isinstance(mail, dict) and isinstance(web, dict)
    found = {
        "active_over_web": round(mail["all_active_s"] / web["all_active_s"], 2),
        "presented_over_web_served": round(mail["mail_presented_s"] / web["web_served_s"], 2),
    }
    if isinstance(floor, dict):
        found["active_over_floor"] = round(mail["all_active_s"] / floor["all_served_s"], 2)
        found["web_active_over_floor"] = round(web["all_active_s"] / floor["all_served_s"], 2)
    return found


def run(
    stack: BenchStack, pf: PostfixServer, dv: DovecotServer, count: int, root: Path
) -> dict[str, object]:
    watch = Watch(stack, pf, dv)
    mail_names = [f"{MAIL_PREFIX}{i:03d}.mail.bench.test" for i in range(count)]
    web_names = [f"{WEB_PREFIX}{i:03d}.web.bench.test" for i in range(count)]
    out: dict[str, object] = {
        "hosts": count,
        "modoboa_workers": 2,
        "mail_ports": watch.ports,
        "postfix": _first_line([_sbin("postconf"), "-d", "-h", "mail_version"]),
        "dovecot": _first_line(dv.dovecot_command + ["--version"]),
    }
    out["create_mail"] = _burst(watch, mail_names, MAIL_PREFIX, mail=True)
    print(f"  {count} mail hosts created: {out['create_mail']}", flush=True)
    out["create_web"] = _burst(watch, web_names, WEB_PREFIX, mail=False)
    print(f"  {count} web hosts created: {out['create_web']}", flush=True)
    out["renew_web"] = _renewal(watch, web_names, WEB_PREFIX, mail=False)
    print(f"  {count} web hosts renewed by one scan: {out['renew_web']}", flush=True)
    out["renew_mail"] = _renewal(watch, mail_names, MAIL_PREFIX, mail=True)
    print(f"  {count} mail hosts renewed by one scan: {out['renew_mail']}", flush=True)
    # The protocol floor for the same number of names, as in scenario 3 (issued, then reissued).
    floors = [Floor(stack, root / "floor") for _ in range(min(THREADS, count))]
    floor_names = [f"{MAIL_PREFIX}{i:03d}.floor.bench.test" for i in range(count)]
    retries: list[str] = []
    _floor_burst(floors, stack, floor_names, retries)
    out["floor_renew"] = {
        "all_served_s": round(_floor_burst(floors, stack, floor_names, retries), 2),
        "nginx_reloads": 1,
        "retried": retries,
    }
    print(f"  floor, {count} renewals: {out['floor_renew']}", flush=True)
    out["ratios"] = ratios(out)
    print(f"  ratios: {out['ratios']}", flush=True)
    return out


def _as_int(serial: str | None) -> int | None:
    return int(serial, 16) if serial else None


def _first_line(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"

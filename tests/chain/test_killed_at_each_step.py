"""A worker SIGKILLed at each step of a provisioning and of a renewal, then the recovery.

Each test runs the real job in a child process (``sudden_death.py``): a `modoboa` worker on
the session's Redis, nginx and Pebble that kills itself at one point. Then, as an operator
would check: the pair on disk is a key and the certificate of that key (old or new, never
mixed), nginx serves a certificate of that pair or the HTTP-only site (and its
configuration on disk passes `nginx -t`, so another host's reload would not fail), Retry
would be accepted at once; then the retry sweep resumes the host with nobody clicking, and
the host is active, nginx serves the stored pair, and no challenge token is left.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.test import override_settings
from django.utils import timezone

from modoboa_pro.testing import NginxServer, RedisServer
from modoboa_pro.virtualhosts import conf, constants, jobs, policy, queueing, services
from modoboa_pro.virtualhosts.adapters import probe, storage, tls, webroot, x509
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, REPO, Chain, stop_by_pid
from .sudden_death import NOT_REACHED, PROVISIONING_POINTS, RENEWAL_POINTS

pytestmark = [pytest.mark.chain, pytest.mark.killed]

CHILD_TIMEOUT = 60
STEADY_TIMEOUT = 10.0
# The recovery runs with this reload timeout: a claim left by a dead run that still held
# up reloads (a dead reloader's made every reload wait 120 s) fails the run, visibly.
RECOVERY_RELOAD_TIMEOUT = 10

# What certs/<host> holds after the death, and what nginx serves for the name.
NONE, OLD, NEW = "none", "old", "new"  # pair (NONE: no pair yet)
ABSENT, HTTP = "absent", "http-only"  # served, besides OLD and NEW certificates


@dataclass(frozen=True)
class After:
    pair: str
    served: str
    job_queued: bool = False  # a job of the run is still queued: a worker finishes it


PROVISIONING = {
    "http_site_written": After(NONE, ABSENT),
    "http_site_deferred": After(NONE, ABSENT, job_queued=True),
    "http_site_probe": After(NONE, HTTP),
    "http_site_served": After(NONE, HTTP),
    "order": After(NONE, HTTP),
    "certificate_issued": After(NONE, HTTP),
    "key_written": After(NONE, HTTP),
    "chain_written": After(NONE, HTTP),
    "pair_swapped": After(NEW, HTTP),
    "https_site_written": After(NEW, HTTP),
    "https_site_deferred": After(NEW, HTTP, job_queued=True),
    "reload_tested": After(NEW, HTTP),
    "reloaded": After(NEW, NEW),
    "verified": After(NEW, NEW),
}
RENEWAL = {
    "http_site_probe": After(OLD, OLD),
    "http_site_served": After(OLD, OLD),
    "order": After(OLD, OLD),
    "certificate_issued": After(OLD, OLD),
    "key_written": After(OLD, OLD),
    "chain_written": After(OLD, OLD),
    "pair_swapped": After(NEW, OLD),
    "finish_queued": After(NEW, OLD, job_queued=True),
    "reload_tested": After(NEW, OLD),
    "reloaded": After(NEW, NEW),
    "verified": After(NEW, NEW),
}
assert tuple(PROVISIONING) == PROVISIONING_POINTS and tuple(RENEWAL) == RENEWAL_POINTS


class Deaths:
    """``sudden_death.py --serve``: Django set up once, one forked dying worker per point."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_subprocess",
               "PYTHONPATH": str(REPO)}  # fmt: skip
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.chain.sudden_death", "--serve"],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True,
        )  # fmt: skip
        self.answers: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(json.loads(line))
        self.answers.put({"returncode": None, "ended": self.process.wait()})

    def _answer(self, timeout: float) -> dict:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the dying worker in {timeout} s") from None
        if "ended" in answer:
            raise AssertionError(f"the fork server ended (exit {answer['ended']}): {self.log.name}")
        return answer

    def run(self, point: str, hostname: str, overrides: dict, log: Path) -> int | None:
        """The forked child's exit code (``-SIGKILL`` when it died at ``point``)."""
        assert self.process.stdin is not None and self.process.poll() is None
        request = {"point": point, "hostname": hostname, "settings": overrides, "log": str(log)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + CHILD_TIMEOUT
        pid = self._answer(CHILD_TIMEOUT).get("pid")
        try:
            return self._answer(max(deadline - time.monotonic(), 0.1))["returncode"]
        except AssertionError:
            if pid is not None and self.process.poll() is None:
                os.kill(pid, signal.SIGKILL)  # the child we forked, stuck
                self._answer(10)  # its exit code: the next death starts clean
            raise

    def stop(self) -> None:
        stop_by_pid(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def deaths(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: None, redis_server: RedisServer,
    nginx_server: NginxServer,
) -> Iterator[Deaths]:
    """Started once the test database, Redis and nginx (its commands in the environment)
    are there."""
    server = Deaths(tmp_path_factory.mktemp("deaths") / "serve.log")
    yield server
    server.stop()


def kill_at(chain: Chain, deaths: Deaths, point: str, hostname: str) -> None:
    """Run the queued job in a child worker that SIGKILLs itself at ``point``."""
    overrides = {name: conf.get(name) for name in conf.DEFAULTS}
    log = chain.storage.parent / f"worker-{point}.log"
    returncode = deaths.run(point, hostname, overrides, log)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    assert returncode != NOT_REACHED, f"the chain never reached {point}:\n{tail}"
    assert returncode == -signal.SIGKILL, f"exit {returncode}:\n{tail}"


def stored_pair(chain: Chain, hostname: str) -> str | None:
    """The serial of the pair certs/<host> points at, checking that key and chain match."""
    fullchain, privkey = storage.certificate_paths(chain.storage, hostname)
    if not fullchain.parent.is_symlink():
        return None
    return whole_pair(fullchain.parent)


def whole_pair(directory: Path) -> str:
    """The serial of the pair in ``directory``; fails unless the key is the chain's."""
    fullchain = (directory / constants.FULLCHAIN_FILENAME).read_bytes()
    key = (directory / constants.PRIVKEY_FILENAME).read_bytes()
    assert x509.key_matches(fullchain, key), f"{directory}: the key is not the certificate's"
    return x509.parse_leaf(fullchain).serial


def served_serial(chain: Chain, hostname: str, serial: str) -> str:
    """Wait for nginx to steadily serve ``serial`` (a reload may still be draining)."""

    def served(name: str):
        return tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, name)

    return probe.confirm_served(served, hostname, serial, chain.nginx.https_port).serial


def http_answers(chain: Chain, hostname: str, status: int, body: bytes | None = None) -> None:
    """Wait for nginx to steadily answer ``GET /`` for ``hostname`` with ``status`` (a reload
    sent just before the death may still be draining the old workers)."""
    deadline = time.monotonic() + STEADY_TIMEOUT
    streak, seen = 0, ""
    while streak < probe.STABLE_SUCCESSES and time.monotonic() < deadline:
        answer = requests.get(
            f"http://127.0.0.1:{chain.nginx.http_port}/",
            headers={"Host": hostname},
            allow_redirects=False,
            timeout=5,
        )
        seen = f"HTTP {answer.status_code} {answer.content[:60]!r}"
        ok = answer.status_code == status and body in (None, answer.content)
        streak = streak + 1 if ok else 0
        time.sleep(probe.STABLE_INTERVAL)
    assert streak >= probe.STABLE_SUCCESSES, f"nginx answers {seen} for {hostname}"


def tokens_left(chain: Chain) -> list[str]:
    directory = chain.storage.joinpath(constants.WEBROOT_DIRNAME, *webroot.CHALLENGE_SUBPATH)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def check_after_death(
    chain: Chain, host: VirtualHost, point: str, expect: After, old: str | None
) -> str | None:
    """What an operator finds right after the death; returns the stored serial."""
    hostname = host.hostname
    serial = stored_pair(chain, hostname)
    if expect.pair == NONE:
        assert serial is None
    elif expect.pair == OLD:
        assert serial == old
    else:
        assert serial is not None and serial != old

    # The configuration on disk is valid: any reload, for any host, still works.
    test = subprocess.run(chain.nginx.test_command, capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stdout + test.stderr

    if expect.served == ABSENT:
        http_answers(chain, hostname, 404)  # nginx's default server: not loaded yet
    elif expect.served == HTTP:
        http_answers(chain, hostname, 200, BACKEND_BODY)
    else:
        wanted = old if expect.served == OLD else serial
        assert wanted is not None
        assert served_serial(chain, hostname, wanted) == wanted

    if point in ("http_site_probe", "order"):
        assert tokens_left(chain), "the dead run's token (probe or challenge) is still there"
    host.refresh_from_db()
    assert host.status == constants.STATUS_PROVISIONING
    # Nothing blocks the host: Retry would be accepted at once (or the run's own job,
    # still queued, finishes it).
    assert queueing.is_busy(host.pk, hostname) is expect.job_queued
    return serial


def recover(chain: Chain, host: VirtualHost, expect: After) -> None:
    """The documented recovery with nobody clicking: the retry sweep, once the host has not
    changed for ``ORPHANED_RUN_AFTER`` (backdated here), then a worker."""
    quiet = timezone.now() - policy.ORPHANED_RUN_AFTER - datetime.timedelta(seconds=1)
    VirtualHost.objects.filter(pk=host.pk).update(updated_at=quiet)
    report = jobs.retry_due_virtualhosts()
    if expect.job_queued:
        assert report["busy"] == [host.hostname]
    else:
        assert report["retried"] == [host.hostname]
    with override_settings(VIRTUALHOSTS_RELOAD_TIMEOUT=RECOVERY_RELOAD_TIMEOUT):
        chain.drain()


def check_recovered(chain: Chain, host: VirtualHost) -> str:
    """The host is active, nginx serves the stored whole pair, no token is left."""
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    serial = stored_pair(chain, host.hostname)
    assert serial == host.cert_serial
    assert served_serial(chain, host.hostname, serial) == serial
    assert tokens_left(chain) == []
    ledger = webroot.TokenLedger(chain.storage / constants.CHALLENGES_DIRNAME, host.hostname)
    assert ledger.tokens() == []
    # What a failed reload would roll back to is a whole pair too.
    previous = storage.previous_pair(chain.storage, host.hostname)
    if previous is not None:
        whole_pair(previous)
    certs = chain.storage / constants.CERTS_DIRNAME
    leftovers = [p for p in certs.rglob(".*") if p.name != storage.PAIRS_DIRNAME]
    assert leftovers == []
    assert not chain.failed_jobs()
    return serial


@pytest.mark.parametrize("point", PROVISIONING_POINTS)
def test_provisioning_killed_at(chain: Chain, deaths: Deaths, point: str):
    expect = PROVISIONING[point]
    host = VirtualHost.objects.create(hostname=f"{point.replace('_', '-')}.example.test")
    kill_at(chain, deaths, point, host.hostname)
    after_death = check_after_death(chain, host, point, expect, old=None)
    recover(chain, host, expect)
    serial = check_recovered(chain, host)
    if after_death is not None:
        assert serial == after_death  # the stored certificate is used: no second order


@pytest.mark.parametrize("point", RENEWAL_POINTS)
def test_renewal_killed_at(chain: Chain, deaths: Deaths, point: str):
    expect = RENEWAL[point]
    host = VirtualHost.objects.create(hostname=f"{point.replace('_', '-')}.renew.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    old = host.cert_serial
    services.renew_now(host)  # "Renew now": the renewal job is queued
    kill_at(chain, deaths, point, host.hostname)
    after_death = check_after_death(chain, host, point, expect, old=old)
    recover(chain, host, expect)
    serial = check_recovered(chain, host)
    # The Renew now is remembered until a new pair is stored: killed before that, the
    # sweep's renewal orders one; after, it serves the stored one and orders nothing.
    if after_death == old:
        assert serial != old
    else:
        assert serial == after_death

"""A worker killed mid-run does not hold its host: Retry works at once, the run completes.

Through the deployed instance of ``tests/deployment.py``: its real ``rqworker modoboa``
process (and RQ's work horse) SIGKILLed while the order waits on the CA, as an OOM kill or
a power cut would, then restarted as supervisor would.
"""

from __future__ import annotations

import time

import pytest
import requests

from modoboa_pro.demo.instance import DjangoProcess
from modoboa_pro.virtualhosts import constants
from modoboa_pro.virtualhosts.adapters import storage, tls, webroot

from ..deployment import Stack

pytestmark = pytest.mark.operations

WAIT = 60.0


def wait_for(what: str, check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def modoboa_worker(stack: Stack) -> DjangoProcess:
    [worker] = [
        p for p in stack.demo.processes if p.name == "rqworker-modoboa" and p.pid is not None
    ]
    assert isinstance(worker, DjangoProcess)
    return worker


def restart_worker(stack: Stack) -> None:
    """What supervisor does after the crash: start a new `rqworker modoboa`."""
    restarted = stack.demo.instance.worker("modoboa", stack.demo.redis.client())
    stack.demo.processes.append(restarted)
    restarted.start()


def is_active(host: dict) -> bool:
    return host["status"] == "active"


def wait_until(stack: Stack, host_id: int, what: str, done) -> dict:
    """The host's API view once ``done(host)`` holds."""
    return wait_for(what, lambda: h if done(h := stack.api.virtualhost(host_id)) else None)


def post(stack: Stack, path: str) -> requests.Response:
    return stack.api.session.post(f"{stack.api.base_url}/api/v2/{path}", timeout=30)


def test_retry_right_after_a_worker_dies_mid_order(stack: Stack):
    hostname = "crash.alpha.test"
    # The pre-flight's A and AAAA are answered, then the CA's validation hangs: the run sits in
    # the order step.
    stack.dns.answers_left[hostname] = 2
    host = stack.api.create_virtualhost(hostname)
    wait_for(
        "the order step",
        lambda: stack.api.virtualhost(host["id"])["current_step"] == constants.STEP_ORDER,
    )
    time.sleep(1)  # the challenge is published, the run polls the CA
    worker = modoboa_worker(stack)
    worker.crash()
    stack.dns.answers_left.pop(hostname)

    # The dead run holds nothing: Retry is accepted at once, not "already in progress".
    answer = post(stack, f"virtualhosts/{host['id']}/retry/")
    assert answer.status_code == 202, answer.text

    # Supervisor restarts the worker; the retried run completes.
    restart_worker(stack)
    final = wait_until(stack, host["id"], "the host to become active", is_active)
    served = tls.fetch_served_certificate("127.0.0.1", stack.nginx.https_port, hostname)
    assert served.serial == final["certificate"]["serial"]
    # The pair on disk is whole: a key matching its chain, the one nginx serves.
    root = stack.demo.root / "acme"
    stored = storage.read_current(root, hostname)
    assert stored.problem is None and stored.facts is not None
    assert stored.facts.serial == served.serial
    # The killed run's challenge token is gone from the webroot.
    tokens = root.joinpath(constants.WEBROOT_DIRNAME, *webroot.CHALLENGE_SUBPATH)
    ledger = webroot.TokenLedger(root / constants.CHALLENGES_DIRNAME, hostname)
    assert ledger.tokens() == []
    assert not tokens.exists() or list(tokens.iterdir()) == []


def test_renew_right_after_a_worker_dies_mid_renewal(stack: Stack):
    hostname = "renewcrash.alpha.test"
    host = stack.api.create_virtualhost(hostname)
    before = wait_until(stack, host["id"], "the first certificate", is_active)
    stack.dns.answers_left[hostname] = 2  # the pre-flight passes, the renewal's validation hangs
    assert post(stack, f"virtualhosts/{host['id']}/renew/").status_code == 202
    wait_for(
        "the renewal's order step",
        lambda: stack.api.virtualhost(host["id"])["history"][0]["step"] == constants.STEP_ACCOUNT,
    )
    time.sleep(1.5)  # the renewal now waits on the CA
    modoboa_worker(stack).crash()
    stack.dns.answers_left.pop(hostname)

    # Still served with the old certificate, and not blocked: Renew now is accepted again.
    served = tls.fetch_served_certificate("127.0.0.1", stack.nginx.https_port, hostname)
    assert served.serial == before["certificate"]["serial"]
    answer = post(stack, f"virtualhosts/{host['id']}/renew/")
    assert answer.status_code == 202, answer.text

    restart_worker(stack)
    after = wait_until(
        stack,
        host["id"],
        "the renewed certificate",
        lambda h: is_active(h) and h["certificate"]["serial"] != before["certificate"]["serial"],
    )
    served = tls.fetch_served_certificate("127.0.0.1", stack.nginx.https_port, hostname)
    assert served.serial == after["certificate"]["serial"]
    stored = storage.read_current(stack.demo.root / "acme", hostname)
    assert stored.problem is None and stored.facts is not None
    assert stored.facts.serial == served.serial

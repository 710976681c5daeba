"""The ACME server down before an order, or SIGKILLed in the middle of one, then back.

Each test runs a Pebble of its own, stopped and killed by its PID; Pebble keeps everything in
memory, so once restarted it knows neither the account nor the order.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modoboa_pro.testing import PebbleServer
from modoboa_pro.virtualhosts import constants, jobs, policy, retries, scan, services
from modoboa_pro.virtualhosts.adapters import acme, counters, storage, tls, webroot
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_failures import http_get, last_run_steps, provision_and_fail
from .test_renewal import served_serial, stand_in

pytestmark = pytest.mark.chain

SECOND = datetime.timedelta(seconds=1)
# How long Pebble may take to reach the validation of a name (it answers in milliseconds).
VALIDATION_WAIT = 30.0


@pytest.fixture
def own_pebble(chain: Chain, tmp_path_factory, settings) -> Iterator[PebbleServer]:
    """A Pebble this test may stop, kill and restart without disturbing the others."""
    server = PebbleServer(
        tmp_path_factory.mktemp("own-pebble"),
        http_port=chain.nginx.http_port,
        dns_address=chain.dns.address,
    )
    server.start()
    settings.ACME_DIRECTORY_URL = server.directory_url
    settings.ACME_CA_BUNDLE = str(server.ca_bundle)
    yield server
    server.stop()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class KillWhenValidating(threading.Thread):
    """SIGKILLs Pebble once it validates ``hostname``: its DNS query is held unanswered
    (``dns.silent``), so the kill lands while the client polls the authorization."""

    def __init__(self, chain: Chain, pebble: PebbleServer, hostname: str) -> None:
        super().__init__(daemon=True)
        self.chain, self.pebble, self.hostname = chain, pebble, hostname
        self.killed_pid: int | None = None
        chain.dns.silent.add(hostname)

    def run(self) -> None:
        deadline = time.monotonic() + VALIDATION_WAIT
        while time.monotonic() < deadline:
            if any(name.rstrip(".") == self.hostname for _, name, _ in self.chain.dns.unanswered):
                self.killed_pid = self.pebble.crash()
                return
            time.sleep(0.02)

    def __enter__(self) -> KillWhenValidating:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join(timeout=VALIDATION_WAIT)
        self.chain.dns.silent.discard(self.hostname)
        assert self.killed_pid is not None, f"Pebble never validated {self.hostname}"
        assert gone(self.killed_pid)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def certificate_files(chain: Chain, hostname: str) -> list[str]:
    """Every file of ``hostname`` under certs/, temporary ones included."""
    return [f for f in files_under(chain.storage) if f.startswith("certs/") and hostname in f]


def assert_no_token_left(chain: Chain, hostname: str) -> None:
    tokens = chain.storage.joinpath(constants.WEBROOT_DIRNAME, *webroot.CHALLENGE_SUBPATH)
    assert not tokens.exists() or list(tokens.iterdir()) == []
    ledger = webroot.TokenLedger(chain.storage / constants.CHALLENGES_DIRNAME, hostname)
    assert ledger.tokens() == []


def assert_backing_off(host: VirtualHost, attempts: int = 1) -> None:
    """Failed with a retry planned by the back-off table, from the moment it failed."""
    assert host.attempts == attempts
    assert host.next_attempt_at == host.updated_at + policy.retry_delay(attempts)


def sweep(at: datetime.datetime) -> list[str]:
    """The retry sweep, as its cron job would run it at ``at``."""
    return retries.run(letsencrypt=True, now=at).retried


def assert_pair_served(chain: Chain, host: VirtualHost) -> None:
    """The pair on disk is whole (its key matches its chain) and is what nginx serves."""
    stored = storage.read_current(chain.storage, host.hostname)
    assert stored.problem is None and stored.facts is not None
    served = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, host.hostname)
    assert served.serial == stored.facts.serial == host.cert_serial


def test_ca_down_before_the_order(chain: Chain, own_pebble: PebbleServer):
    hostname = "ca-down.example.test"
    own_pebble.stop()

    host = provision_and_fail(chain, hostname)
    assert host.failed_step == constants.STEP_ACCOUNT
    assert (
        f"The ACME directory {own_pebble.directory_url} could not be fetched "
        "(connection refused); it will be retried with back-off." in host.last_error
    )
    assert "HTTPSConnectionPool" not in host.last_error  # no urllib3 internals
    assert_backing_off(host)
    # Nothing of the certificate was written; the HTTP-only site serves meanwhile.
    assert certificate_files(chain, hostname) == []
    assert [f for f in files_under(chain.storage) if f.endswith(".tmp")] == []
    assert_no_token_left(chain, hostname)
    assert http_get(chain, hostname).status_code == 200

    own_pebble.start()
    assert sweep(host.next_attempt_at - SECOND) == []  # not before its time
    assert sweep(host.next_attempt_at) == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.attempts == 0 and host.last_error == ""
    assert_pair_served(chain, host)


def test_ca_killed_while_validating_a_first_order(
    chain: Chain, own_pebble: PebbleServer, settings
):
    hostname = "ca-killed.example.test"
    settings.VIRTUALHOSTS_PREFLIGHT = False  # it would find the silent name first
    with KillWhenValidating(chain, own_pebble, hostname):
        host = provision_and_fail(chain, hostname)

    assert host.failed_step == constants.STEP_ORDER
    # Killed while a poll is in flight, the CA either refuses the next connection or drops
    # the one open (under load, mid-TLS): both are said in words.
    assert any(
        f"The CA at {own_pebble.directory_url} stopped answering during the order for "
        f"{hostname} ({reason}); it will be retried with back-off." in host.last_error
        for reason in ("connection refused", "the connection was closed without an answer")
    ), host.last_error
    assert_backing_off(host)
    assert certificate_files(chain, hostname) == []
    assert_no_token_left(chain, hostname)

    # Back, with no memory of our account or of the order.
    own_pebble.start()
    assert sweep(host.next_attempt_at - SECOND) == []
    assert sweep(host.next_attempt_at) == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert dict(last_run_steps(host))[constants.STEP_ACCOUNT] == constants.OUTCOME_OK
    assert_pair_served(chain, host)
    assert_no_token_left(chain, hostname)


def test_ca_killed_while_validating_a_renewal(chain: Chain, own_pebble: PebbleServer, settings):
    hostname = "renew-killed.example.test"
    settings.VIRTUALHOSTS_PREFLIGHT = False  # it would find the silent name first
    host = stand_in(chain, hostname)  # 5 days left: due
    chain.nginx.reload()
    fullchain, privkey = storage.certificate_paths(chain.storage, hostname)
    old = (fullchain.read_bytes(), privkey.read_bytes())
    old_serial = host.cert_serial

    with KillWhenValidating(chain, own_pebble, hostname):
        assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
        chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_ORDER
    assert f"stopped answering during the order for {hostname}" in host.last_error
    assert_backing_off(host)
    # The previous pair is untouched, byte for byte, and still served.
    assert (fullchain.read_bytes(), privkey.read_bytes()) == old
    assert served_serial(chain, hostname) == old_serial
    assert_no_token_left(chain, hostname)

    own_pebble.start()
    # Neither the daily scan nor the sweep tries again before the back-off says so.
    early = host.next_attempt_at - SECOND
    report = scan.run(
        chain.storage,
        30,
        lambda h: pytest.fail(f"{h} renewed early"),
        now=early,
        list_verdicts=True,
    )
    assert [v.action for v in report.verdicts] == [policy.SKIP_BACKOFF]
    assert sweep(early) == []
    assert sweep(host.next_attempt_at) == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != old_serial
    assert_pair_served(chain, host)


def account_registrations(chain: Chain) -> int:
    """newAccount requests the workers sent, from the metrics' counters."""
    snapshot = counters.read(chain.redis.client())
    return sum(n for labels, n in snapshot.acme_requests.items() if labels[2] == "newAccount")


def directory_fetches(chain: Chain) -> int:
    """Requests for the ACME directory the workers sent: one per CA client a job made."""
    snapshot = counters.read(chain.redis.client())
    return sum(n for labels, n in snapshot.acme_requests.items() if labels[2] == "directory")


def test_a_new_hosts_run_meets_the_ca_while_nginx_loads_its_site_and_orders_with_it(
    chain: Chain, monkeypatch
):
    """The follow-up that waits for the HTTP-only site's reload connects to the CA meanwhile
    (``pipeline._reach_ca_early``), and orders with that same client: one directory fetch for
    the whole run, made while the run still stood at its HTTP-only site."""
    connect = acme.AcmeClient._connect
    steps_at_connect: list[str] = []

    def spied(self: acme.AcmeClient):
        if self._client is None:  # a connection made now, not the client kept
            row = VirtualHost.objects.filter(hostname="early.example.test").first()
            steps_at_connect.append(row.current_step if row else "")
        return connect(self)

    monkeypatch.setattr(acme.AcmeClient, "_connect", spied)
    before = directory_fetches(chain)
    host = VirtualHost.objects.create(hostname="early.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert steps_at_connect == [constants.STEP_HTTP_SITE]
    assert directory_fetches(chain) - before == 1
    assert dict(last_run_steps(host))[constants.STEP_ACCOUNT] == constants.OUTCOME_OK


def test_the_account_is_remembered_and_registered_again_when_the_ca_forgot_it(
    chain: Chain, own_pebble: PebbleServer, caplog
):
    """Runs use the account this storage remembers, without asking the CA; a CA that no
    longer knows it (restarted, its records gone) gets it registered again by the order."""
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    host = VirtualHost.objects.create(hostname="remembered.example.test")
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    meta = acme.account_dir(chain.storage, own_pebble.directory_url) / "account.json"
    first_account = json.loads(meta.read_text())["uri"]
    assert account_registrations(chain) == 1

    def renew() -> str:
        services.enqueue_renewal(host, force=True)
        chain.drain()
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        assert served_serial(chain, host.hostname) == host.cert_serial
        return host.cert_serial

    first = host.cert_serial
    second = renew()
    assert second != first and account_registrations(chain) == 1  # remembered

    own_pebble.stop()
    own_pebble.start()  # Pebble keeps accounts in memory: this one is gone
    third = renew()
    assert third not in (first, second)
    assert account_registrations(chain) == 2
    assert "no longer knows the ACME account" in caplog.text
    assert json.loads(meta.read_text())["uri"] != first_account

"""An admin's change made while a run holds the host wins over what the run loaded."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import django_rq
import pytest
from cryptography import x509

from modoboa_pro.virtualhosts import constants, jobs, services
from modoboa_pro.virtualhosts.adapters import locks, nginx
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_failures import http_get

pytestmark = pytest.mark.chain


def redis():
    return django_rq.get_connection("modoboa")


class CAWithHook:
    """The real CA; ``before_order()`` runs just before it issues the certificate."""

    def __init__(self, ca, before_order: Callable[[], None]) -> None:
        self._ca, self._before_order = ca, before_order

    def __getattr__(self, name: str):
        return getattr(self._ca, name)

    def obtain_certificate(self, *args, **kwargs) -> bytes:
        self._before_order()
        return self._ca.obtain_certificate(*args, **kwargs)


def act_during_run(monkeypatch, hostname: str, action: Callable[[], None], *, at: str) -> list:
    """Do ``action`` once inside the real run: before its order ("order") or its TLS
    check ("verify"). Returns a list that gets whether the host lock was held then."""
    seen: list[bool] = []

    def once() -> None:
        if not seen:
            seen.append(locks.is_locked(redis(), hostname))
            action()

    real_build_context = jobs.build_context

    def build_context():
        ctx = real_build_context()
        if at == "order":
            make_ca = ctx.acme
            ctx.acme = lambda s: CAWithHook(make_ca(s), once)
        else:
            served = ctx.served
            ctx.served = lambda name: (once(), served(name))[1]
        return ctx

    monkeypatch.setattr(jobs, "build_context", build_context)
    return seen


def tls_names(chain: Chain, hostname: str) -> list[str]:
    """The DNS names of the certificate nginx presents for SNI ``hostname`` ([] if none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", chain.nginx.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return []
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return san.value.get_values_for_type(x509.DNSName)


def serves_challenge(chain: Chain, hostname: str) -> bool:
    """Whether nginx serves the host's ACME challenge path (both its sites do)."""
    probe = chain.storage / constants.WEBROOT_DIRNAME / ".well-known" / "acme-challenge" / "probe"
    probe.write_text(hostname)
    try:
        response = http_get(chain, hostname, "/.well-known/acme-challenge/probe")
    finally:
        probe.unlink()
    return response.status_code == 200 and response.text == hostname


def assert_not_served(chain: Chain, hostname: str) -> None:
    assert not nginx.site_path(chain.nginx.sites_dir, hostname).exists()
    assert http_get(chain, hostname).status_code == 404  # nginx's default server
    assert not serves_challenge(chain, hostname)
    assert hostname not in tls_names(chain, hostname)


def assert_archived(chain: Chain, hostname: str) -> Path:
    assert not (chain.storage / "certs" / hostname).exists()
    archives = list((chain.storage / "archive").glob(f"{hostname}-*"))
    assert len(archives) == 1, archives
    assert any(archives[0].rglob("fullchain.pem"))
    return archives[0]


def provision(chain: Chain, hostname: str) -> VirtualHost:
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert serves_challenge(chain, hostname) and hostname in tls_names(chain, hostname)
    return host


@contextmanager
def lock_held_by_another_run(hostname: str, seconds: float = 1.5) -> Iterator[list[float]]:
    """Another worker holds the host lock for ``seconds``; yields [when it lets go]."""
    taken, let_go_at = threading.Event(), []

    def hold() -> None:
        with locks.HostLock(redis(), hostname, datetime.timedelta(minutes=15)):
            taken.set()
            time.sleep(seconds)
            let_go_at.append(time.monotonic())

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10), "the other run never took the lock"
    try:
        yield let_go_at
    finally:
        thread.join(30)


def test_disable_during_a_run_ends_disabled(chain: Chain, monkeypatch):
    hostname = "disabled-midway.example.test"
    host = VirtualHost.objects.create(hostname=hostname)  # its provisioning is queued
    seen = act_during_run(
        monkeypatch,
        hostname,
        lambda: services.set_enabled(VirtualHost.objects.get(pk=host.pk), False),
        at="order",
    )
    chain.drain()

    assert seen == [True]  # the admin acted while the run held the host
    host.refresh_from_db()
    assert host.enabled is False
    assert host.status == constants.STATUS_DISABLED
    assert_not_served(chain, hostname)
    assert chain.failed_jobs() == []


def test_delete_during_a_run_leaves_nothing(chain: Chain, monkeypatch):
    hostname = "deleted-midway.example.test"
    host = VirtualHost.objects.create(hostname=hostname)
    # At the TLS check the certificate is stored and the HTTPS site installed: there is
    # something to archive whatever the run does once it notices the deletion.
    seen = act_during_run(
        monkeypatch,
        hostname,
        lambda: services.delete_virtualhost(VirtualHost.objects.get(pk=host.pk)),
        at="verify",
    )
    chain.drain()

    assert seen == [True]
    assert not VirtualHost.objects.filter(hostname=hostname).exists()
    assert_not_served(chain, hostname)
    assert_archived(chain, hostname)
    assert chain.failed_jobs() == []


def test_disable_job_waits_for_the_run_in_progress(chain: Chain):
    hostname = "disable-waits.example.test"
    host = provision(chain, hostname)
    VirtualHost.objects.filter(pk=host.pk).update(enabled=False)  # no job queued

    with lock_held_by_another_run(hostname) as let_go_at:
        status = jobs.disable_virtualhost(host.pk)
        returned_at = time.monotonic()

    assert status == constants.STATUS_DISABLED
    assert let_go_at and returned_at >= let_go_at[0]
    host.refresh_from_db()
    assert host.status == constants.STATUS_DISABLED
    assert_not_served(chain, hostname)


def test_remove_job_waits_for_the_run_in_progress(chain: Chain):
    hostname = "remove-waits.example.test"
    host = provision(chain, hostname)
    VirtualHost.objects.filter(pk=host.pk).delete()  # its remove job is queued, never run

    with lock_held_by_another_run(hostname) as let_go_at:
        archived = jobs.remove_virtualhost(hostname)
        returned_at = time.monotonic()

    assert let_go_at and returned_at >= let_go_at[0]
    assert archived is not None and Path(archived) == assert_archived(chain, hostname)
    assert_not_served(chain, hostname)


def test_a_disable_whose_reload_failed_is_not_left_served(chain: Chain, monkeypatch):
    """The site file is removed, then the reload fails (no privileged worker, Redis lost
    its answer): the retry finds no file, yet must still make nginx forget the host."""
    from modoboa_pro.virtualhosts.adapters import reloader
    from modoboa_pro.virtualhosts.errors import NginxReloadFailed

    hostname = "half-disabled.example.test"
    host = provision(chain, hostname)
    real_call = reloader.LocalReloader.__call__
    calls = []

    def failing_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise NginxReloadFailed("the reload did not happen", retryable=True)
        return real_call(self)

    monkeypatch.setattr(reloader.LocalReloader, "__call__", failing_once)
    services.set_enabled(host, False)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert not nginx.site_path(chain.nginx.sites_dir, hostname).exists()
    assert serves_challenge(chain, hostname)  # nginx never reloaded: still served

    assert jobs.disable_virtualhost(host.pk) == constants.STATUS_DISABLED  # the retry
    host.refresh_from_db()
    assert host.status == constants.STATUS_DISABLED
    assert_not_served(chain, hostname)

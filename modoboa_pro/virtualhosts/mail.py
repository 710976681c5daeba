"""The mail deploy: every enabled mail host's certificate to Postfix and Dovecot, by SNI.

``deploy_all`` runs in the privileged (root) worker, from a job that takes no
argument: the hosts come from the database, every path from settings. It
rewrites the plugin's two files from scratch (so a disabled, unmarked or deleted
host simply drops out), has each service check them, and reloads each once.
Runs request it through ``MailDeployer`` (coalesced like nginx reloads, under
their own Redis keys: one deploy serves a burst of renewals).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from django.utils import timezone

from . import conf, constants, policy
from .adapters import counters, dovecot, mailprobe, postfix, storage
from .adapters.mailfiles import SniEntry
from .adapters.reloader import KEY_PREFIX, LocalReloader, PrivilegedReloader
from .adapters.x509 import CertificateFacts
from .errors import (
    MailConfigRejected,
    MailError,
    MailReloadFailed,
    MailWorkerMissing,
    ReloadInterrupted,
    VirtualHostError,
)
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")

MAIL_KEY_PREFIX = KEY_PREFIX + "mail:"


@dataclass(frozen=True)
class MailSettings:
    """The mail deploy's settings, read when it runs."""

    services: tuple[str, ...]
    postfix_map: Path
    postfix_config_dir: Path
    postfix_command: tuple[str, ...]
    postmap_command: tuple[str, ...]
    dovecot_include: Path
    dovecot_config: Path
    dovecot_command: tuple[str, ...]
    doveconf_command: tuple[str, ...]
    doveadm_command: tuple[str, ...]
    verify_ports: Mapping[str, int]

    @property
    def enabled(self) -> bool:
        return bool(self.services)

    def ports_to_verify(self) -> dict[str, int]:
        """The verified ports of the services deployed to (an unknown service is refused)."""
        unknown = set(self.services) - {constants.MAIL_POSTFIX, constants.MAIL_DOVECOT}
        if unknown:
            raise MailError(
                f"VIRTUALHOSTS_MAIL_SERVICES names {', '.join(sorted(unknown))}: only "
                "'postfix' and 'dovecot' are known. Fix the setting."
            )
        ports: dict[str, int] = {}
        for service, port in self.verify_ports.items():
            if service not in mailprobe.SERVICES:
                raise MailError(
                    f"VIRTUALHOSTS_MAIL_VERIFY_PORTS names {service!r}, not a mail service "
                    f"this plugin checks ({', '.join(mailprobe.SERVICES)}): fix the setting."
                )
            if mailprobe.SERVICES[service][1].lower() in self.services:
                ports[service] = int(port)
        return ports

    def lists(self, hostname: str) -> bool:
        """Whether one of the installed files still names ``hostname``."""
        return (
            constants.MAIL_POSTFIX in self.services and postfix.listed(self.postfix_map, hostname)
        ) or (
            constants.MAIL_DOVECOT in self.services
            and dovecot.listed(self.dovecot_include, hostname)
        )


def read_settings() -> MailSettings:
    services = tuple(str(s).lower() for s in conf.get("VIRTUALHOSTS_MAIL_SERVICES") or ())
    return MailSettings(
        services=services,
        postfix_map=Path(conf.get("VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP")),
        postfix_config_dir=Path(conf.get("VIRTUALHOSTS_MAIL_POSTFIX_CONFIG_DIR")),
        postfix_command=tuple(conf.get("VIRTUALHOSTS_MAIL_POSTFIX_COMMAND")),
        postmap_command=tuple(conf.get("VIRTUALHOSTS_MAIL_POSTMAP_COMMAND")),
        dovecot_include=Path(conf.get("VIRTUALHOSTS_MAIL_DOVECOT_INCLUDE")),
        dovecot_config=Path(conf.get("VIRTUALHOSTS_MAIL_DOVECOT_CONFIG")),
        dovecot_command=tuple(conf.get("VIRTUALHOSTS_MAIL_DOVECOT_COMMAND")),
        doveconf_command=tuple(conf.get("VIRTUALHOSTS_MAIL_DOVECONF_COMMAND")),
        doveadm_command=tuple(conf.get("VIRTUALHOSTS_MAIL_DOVEADM_COMMAND")),
        verify_ports=dict(conf.get("VIRTUALHOSTS_MAIL_VERIFY_PORTS") or {}),
    )


def entries(storage_root: Path) -> list[SniEntry]:
    """Every enabled mail host whose certificate can be served now.

    A pair that is missing, damaged or expired is left out (the host's own run reports
    it): one bad pair must not make Dovecot refuse its whole configuration.
    """
    found = []
    now = timezone.now()
    hosts = VirtualHost.objects.filter(enabled=True, serves_mail=True).order_by("hostname")
    for hostname, serial in hosts.values_list("hostname", "cert_serial"):
        stored = storage.read_current(storage_root, hostname, issued_serial=serial)
        if stored.facts is None or stored.problem is not None:
            continue
        fullchain, privkey = storage.certificate_paths(storage_root, hostname)
        if policy.expired_problem(now, stored.facts.not_after, fullchain) is not None:
            continue
        found.append(SniEntry(hostname, fullchain, privkey))
    return found


ReloadCounter = Callable[[str, bool], None]


def _not_counted(service: str, ok: bool) -> None:
    return None


@contextlib.contextmanager
def _counted(on_reload: ReloadCounter, service: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        on_reload(service, False)
        raise
    on_reload(service, True)


def deploy(
    ms: MailSettings, hosts: list[SniEntry], on_reload: ReloadCounter = _not_counted
) -> str:
    """Install both files (each checked by its service), then reload each service once;
    ``on_reload(service, ok)`` is told of each reload (the metrics' count)."""
    done = []
    if constants.MAIL_POSTFIX in ms.services:
        postfix.install_map(
            ms.postfix_map,
            postfix.render_map(hosts),
            config_dir=ms.postfix_config_dir,
            postmap=ms.postmap_command,
            postfix=ms.postfix_command,
        )
    if constants.MAIL_DOVECOT in ms.services:
        version = dovecot.installed_version(ms.dovecot_command)
        dovecot.install_include(
            ms.dovecot_include,
            dovecot.render(hosts, version),
            config=ms.dovecot_config,
            doveconf=ms.doveconf_command,
        )
    if constants.MAIL_POSTFIX in ms.services:
        with _counted(on_reload, constants.MAIL_POSTFIX):
            postfix.reload(ms.postfix_config_dir, ms.postfix_command)
        done.append("Postfix")
    if constants.MAIL_DOVECOT in ms.services:
        with _counted(on_reload, constants.MAIL_DOVECOT):
            dovecot.reload(ms.dovecot_config, ms.doveadm_command)
        done.append("Dovecot")
    names = ", ".join(e.hostname for e in hosts) or "no mail host"
    return f"{' and '.join(done)} reloaded with the certificates of {names}"


def deploy_all(on_reload: ReloadCounter = _not_counted) -> str:
    """The privileged job's work: read settings and hosts now, deploy."""
    ms = read_settings()
    ms.ports_to_verify()  # refuses unknown services
    if not ms.enabled:
        return "the mail deploy is turned off (VIRTUALHOSTS_MAIL_SERVICES is empty)"
    root = Path(str(conf.param("acme_account_storage_path")))
    return deploy(ms, entries(root), on_reload)


def outcome_of(func: Callable[[], str]) -> dict[str, Any]:
    """Run ``func``; its outcome as plain data (a job's return value)."""
    try:
        return {"ok": True, "output": func()}
    except VirtualHostError as err:
        kind = "test" if isinstance(err, MailConfigRejected) else "reload"
        return {
            "ok": False,
            "kind": kind,
            "message": err.message,
            "output": getattr(err, "output", ""),
        }


def raise_for_outcome(outcome: dict[str, Any]) -> str:
    if outcome.get("ok"):
        return str(outcome.get("output", ""))
    cls = MailConfigRejected if outcome.get("kind") == "test" else MailReloadFailed
    raise cls(str(outcome.get("message")), output=str(outcome.get("output", "")))


class LocalMailDeployer(LocalReloader):
    """Deploy in this process (a worker that may run postfix and doveadm), coalesced."""

    prefix = MAIL_KEY_PREFIX

    def __init__(self, connection: redis.Redis | None, *, timeout: float = 120) -> None:
        super().__init__([], [], connection, timeout=timeout)

    def _reload(self) -> str:
        connection = self.connection
        return deploy_all(lambda service, ok: counters.count_reload(connection, service, ok))

    def _outcome_of(self, func: Callable[[], str]) -> dict[str, Any]:
        return outcome_of(func)

    def _raise_for(self, outcome: dict[str, Any]) -> str:
        return raise_for_outcome(outcome)


class PrivilegedMailDeployer(PrivilegedReloader):
    """Ask the privileged (root) worker for a mail deploy covering our changes, and wait."""

    prefix = MAIL_KEY_PREFIX

    def request(self) -> int:
        try:
            return super().request()
        except ReloadInterrupted as err:
            raise MailReloadFailed(_REDIS_LOST) from err

    def wait(self, generation: int) -> str:
        try:
            return super().wait(generation)
        except ReloadInterrupted as err:
            raise MailReloadFailed(_REDIS_LOST) from err

    def _raise_for(self, outcome: dict[str, Any]) -> str:
        return raise_for_outcome(outcome)

    def _missing(self, message: str) -> Exception:
        return MailWorkerMissing(message)

    def _nobody_listens(self) -> str:
        name = self._queue_name
        return (
            f"The mail deploy is waiting for Modoboa's privileged RQ worker: no worker listens "
            f"on the queue '{name}'. Start it as root (`python manage.py rqworker {name}`, as "
            "supervisor or systemd do). Postfix and Dovecot keep their current certificates; "
            "the run is retried."
        )

    def _nobody_served(self, seen: list[str]) -> str:
        name = self._queue_name
        who = f"the worker(s) {', '.join(seen)} listening on" if seen else "no worker ran"
        return (
            f"No mail deploy ran within {self.timeout:.0f} s: {who} the queue '{name}' did not "
            "run it (busy, stuck, or not started; see the privileged worker's log). Postfix "
            "and Dovecot keep their current certificates; the run is retried."
        )


_REDIS_LOST = (
    "Lost Redis while asking Modoboa's privileged worker for the mail deploy: whether Postfix "
    "and Dovecot were reloaded is not known. The run is retried once Redis is back, and "
    "checks what they present."
)


def fetch(address: str) -> Callable[[str, int, str], CertificateFacts]:
    """One handshake with SNI on a mail port (``mailprobe.fetch`` at ``address``)."""

    def one(service: str, port: int, hostname: str) -> CertificateFacts:
        return mailprobe.fetch(address, port, service, hostname)

    return one

"""What a run is given: the settings read for it and its adapters (``Context``).

Jobs build the real ones (``jobs.build_context``); tests replace one field to
inject a fault at that seam.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import conf, constants
from .adapters import ari, probe, storage, webroot
from .adapters.acme import ProfileChoice
from .adapters.reloader import Reloader
from .adapters.webroot import TokenLedger
from .adapters.x509 import CertificateFacts
from .rendering import SiteContext

if TYPE_CHECKING:
    from .mail import MailSettings


@dataclass(frozen=True)
class Settings:
    """Every setting and parameter the chain needs, read once at the start of a run."""

    letsencrypt: bool
    email: str
    storage_root: Path
    threshold_days: int
    directory_url: str
    ca_bundle: str | None
    key_type: str
    order_timeout: float
    conf_dir: Path
    http_port: int
    https_port: int
    listen_address: str
    upstream: str
    upstream_protocol: str
    verify_address: str
    # Renewals due by the lifetime rule are spread over this window (policy.spread_window).
    renewal_spread: datetime.timedelta = datetime.timedelta(0)
    # Pre-flight before orders (``adapters.preflight``), and the DNS server it asks.
    preflight: bool = True
    preflight_resolver: str | None = None
    # The instance's ACME profile (ACME_PROFILE): preferred, not required.
    acme_profile: str | None = None
    # VIRTUALHOSTS_ORDER_BUDGET as set (``budget.from_setting`` reads it before each order,
    # so that a malformed one fails the run with its reason); None: no budget.
    order_budget: Mapping[str, object] | None = None
    # Where autoconfig/autodiscover sites forward to (Modoboa); "": upstream, upstream_protocol.
    autoconfig_upstream: str = ""
    autoconfig_upstream_protocol: str = ""

    # Mail hosts keep their key across renewals (VIRTUALHOSTS_MAIL_KEEP_KEY), and these
    # ports' TLSA records are checked (VIRTUALHOSTS_TLSA_PORTS); see ``dane``.
    mail_keep_key: bool = True
    tlsa_ports_setting: object = (25,)  # as set: ``tlsa_ports`` checks it when a mail host asks
    # Reloads return once nginx's old workers stopped accepting (VIRTUALHOSTS_NGINX_PID_FILE
    # names a running master, ``adapters.nginx_processes``): one answer then tells what
    # nginx serves. Otherwise the probes ask for a streak.
    reloads_confirmed: bool = False

    @property
    def stable_answers(self) -> int:
        """Consecutive consistent answers that show what nginx serves after a reload."""
        return 1 if self.reloads_confirmed else probe.STABLE_SUCCESSES

    @property
    def tlsa_ports(self) -> tuple[int, ...]:
        return conf.parse_tlsa_ports(self.tlsa_ports_setting)

    @property
    def webroot(self) -> Path:
        return self.storage_root / constants.WEBROOT_DIRNAME

    @property
    def ledgers(self) -> Path:
        return self.storage_root / constants.CHALLENGES_DIRNAME

    def token_ledger(self, hostname: str) -> TokenLedger:
        return TokenLedger(self.ledgers, hostname)

    @property
    def endpoint(self) -> probe.Endpoint:
        return probe.Endpoint(
            self.webroot,
            self.verify_address,
            self.http_port,
            self.conf_dir,
            self.ledgers,
            self.stable_answers,
        )

    def site_context(self, hostname: str, site: str = constants.SITE_WEB) -> SiteContext:
        fullchain, privkey = storage.certificate_paths(self.storage_root, hostname)
        upstream, protocol = self.upstream, self.upstream_protocol
        if site != constants.SITE_WEB and self.autoconfig_upstream:
            upstream = self.autoconfig_upstream
            protocol = self.autoconfig_upstream_protocol or protocol
        return SiteContext(
            hostname=hostname,
            http_port=self.http_port,
            https_port=self.https_port,
            listen_address=self.listen_address,
            webroot=self.webroot,
            fullchain=fullchain,
            privkey=privkey,
            upstream=upstream,
            upstream_protocol=protocol,
            site=site,
        )


class CertificateAuthority(Protocol):
    def ensure_account(self) -> object: ...

    def obtain_certificate(
        self,
        hostname: str,
        csr_pem: bytes,
        publisher: webroot.WebrootPublisher,
        *,
        replaces: str = "",
        profile: ProfileChoice | None = None,
    ) -> bytes: ...

    def renewal_info(self, cert_id: str) -> ari.RenewalWindow | None: ...


class LockFactory(Protocol):
    def __call__(
        self, hostname: str, *, wait: datetime.timedelta = ...
    ) -> AbstractContextManager[object]: ...


@dataclass
class Context:
    """The adapters a run uses; jobs build the real ones, tests may inject faults."""

    settings: Settings
    reload: Reloader
    acme: Callable[[Settings], CertificateAuthority]
    lock: LockFactory  # the host's lock; ``wait`` for the holder to finish
    served: Callable[[str], CertificateFacts]  # one TLS handshake with SNI
    # Renewals only: queue ``finish_renewal(host_id, generation, run_id)`` behind the
    # other renewals, so that one nginx reload serves them all (None: reload inline).
    defer: Callable[[int, int, str], None] | None = None
    # Provisioning only: a new host's site is written, and ``continue_provisioning(host_id,
    # generation, run_id, step)`` queued behind the other new hosts, so that one reload
    # loads them all (None: reload inline).
    defer_step: Callable[[int, int, str, str], None] | None = None
    # Mail hosts (``mail.py``): the settings, the deploy to Postfix and Dovecot through the
    # privileged worker (coalesced like reloads), one handshake ``(service, port, hostname)``.
    mail_settings: MailSettings | None = None
    mail: Reloader | None = None
    mail_served: Callable[[str, int, str], CertificateFacts] | None = None
    _ca: CertificateAuthority | None = field(default=None, init=False, repr=False)

    def ca(self) -> CertificateAuthority:
        """The run's CA client, made once: one reached early keeps its connection and account."""
        if self._ca is None:
            self._ca = self.acme(self.settings)
        return self._ca

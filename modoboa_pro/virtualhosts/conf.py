"""Django settings of the app, read at call time, each with its documented default.

Instance-wide parameters an admin edits in the UI (email, storage path,
threshold) are Modoboa parameters instead, declared in ``parameters.py`` and
read with ``param()``.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings

from .errors import ConfigurationError

LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"

DEFAULTS: dict[str, Any] = {
    # The certificate authority's ACME directory.
    "ACME_DIRECTORY_URL": LETSENCRYPT_PRODUCTION,
    # PEM bundle trusted for the ACME server's own HTTPS (private CAs, tests);
    # None uses the system trust store.
    "ACME_CA_BUNDLE": None,
    # Key type of certificate private keys: ecdsa-p256, rsa-2048, rsa-3072, rsa-4096.
    "ACME_KEY_TYPE": "ecdsa-p256",
    # ACME profile asked of the CA for every order (e.g. "tlsserver", "shortlived"); None: the
    # CA's default. Only preferred: refused for this account, the order falls back to the
    # default. A host's own ``acme_profile`` overrides it, and is required.
    "ACME_PROFILE": None,
    # Upper bound on how long one order may take (polling authorizations and finalization).
    "ACME_ORDER_TIMEOUT": 90,
    # Directory in which the plugin writes one site file per host; nginx.conf includes it.
    # Not under sites-enabled/: Debian's `include sites-enabled/*;` would read the directory.
    "VIRTUALHOSTS_NGINX_CONF_DIR": "/etc/nginx/modoboa-virtualhosts",
    "VIRTUALHOSTS_NGINX_TEST_COMMAND": ["nginx", "-t"],
    "VIRTUALHOSTS_NGINX_RELOAD_COMMAND": ["nginx", "-s", "reload"],
    # nginx's pid file (its `pid` directive; Debian's default). After the reload command a
    # reload waits until nginx's old workers stopped accepting connections; they do ~100 ms
    # after the command returns. None, or a file that names no nginx master: no wait.
    "VIRTUALHOSTS_NGINX_PID_FILE": "/run/nginx.pid",
    # Ports in the rendered `listen` directives.
    "VIRTUALHOSTS_HTTP_PORT": 80,
    "VIRTUALHOSTS_HTTPS_PORT": 443,
    # Address(es) nginx listens on; empty means all addresses (nginx's default).
    "VIRTUALHOSTS_LISTEN_ADDRESS": "",
    # Where the HTTPS server forwards requests: Modoboa's installer serves the
    # application with uWSGI on this socket.
    "VIRTUALHOSTS_UPSTREAM": "unix:/run/uwsgi/app/modoboa_instance/socket",
    # "uwsgi" (uwsgi_pass, as Modoboa's installer) or "http" (proxy_pass).
    "VIRTUALHOSTS_UPSTREAM_PROTOCOL": "uwsgi",
    # Where autoconfig/autodiscover sites forward the mail clients' paths: Modoboa itself
    # (its modoboa.autoconfig endpoints). None: VIRTUALHOSTS_UPSTREAM, with its protocol.
    # Set both when Modoboa is reached another way than the web sites' upstream, e.g.
    # "http://127.0.0.1:8000" with protocol "http".
    "VIRTUALHOSTS_AUTOCONFIG_UPSTREAM": None,
    "VIRTUALHOSTS_AUTOCONFIG_UPSTREAM_PROTOCOL": None,
    # Where the plugin connects to check which certificate nginx serves.
    "VIRTUALHOSTS_VERIFY_ADDRESS": "127.0.0.1",
    # Pre-flight before every order: the name resolves, and a canary token put in the webroot
    # is fetched back over HTTP through each address it resolves to. Turn off behind a NAT
    # that cannot reach its own public address (no hairpinning).
    "VIRTUALHOSTS_PREFLIGHT": True,
    # "host:port" of the DNS server the pre-flight asks; None: the system's (resolv.conf).
    "VIRTUALHOSTS_PREFLIGHT_RESOLVER": None,
    # How reloads run: "privileged" (a job on Modoboa's root worker) or "local"
    # (in the calling worker, when it may run nginx itself).
    "VIRTUALHOSTS_RELOAD_MODE": "privileged",
    # How long a chain waits for the privileged worker's reload before failing.
    "VIRTUALHOSTS_RELOAD_TIMEOUT": 120,
    # Renewals due by the lifetime rule are spread at random over this many seconds after
    # their due time (at most half the overdue grace), instead of all firing at the scan.
    "VIRTUALHOSTS_RENEWAL_SPREAD": 4 * 3600,
    # The order budget (``budget``): the plugin never sends an order that would exceed these
    # limits of the CA. Keys given override Let's Encrypt's figures (durations in seconds):
    # orders_per_account (300) per orders_window (10800), failed_validations_per_hostname (5)
    # per failed_window (3600), headroom_for_new_hosts (30: orders renewals leave free).
    # None turns the budget off (a private CA without limits).
    "VIRTUALHOSTS_ORDER_BUDGET": {},
    # A host whose runs keep failing this many days in a row (its name no longer points here)
    # is paused: no more daily retries until an operator retries it. 0 never pauses.
    "VIRTUALHOSTS_PAUSE_AFTER_DAYS": 7,  # policy.PAUSE_AFTER
    # Mail hosts (serves_mail) keep their private key across renewals, so that a published
    # TLSA 3 1 1 record stays true; the next key rotates in once its record is published
    # (docs/mail.md). False: a new key for every certificate, as web hosts get.
    "VIRTUALHOSTS_MAIL_KEEP_KEY": True,
    # The ports whose TLSA records (_<port>._tcp.<host>) the plugin shows and checks: 25 is
    # DANE for SMTP (RFC 7672); add 465, 587, 993... only where you publish records too.
    "VIRTUALHOSTS_TLSA_PORTS": [25],
    # The mail deploy (docs/mail.md): the certificates of hosts marked "serves mail" go to
    # these services, by SNI ("postfix", "dovecot"; empty turns the mail deploy off).
    "VIRTUALHOSTS_MAIL_SERVICES": ["postfix", "dovecot"],
    # The map the plugin writes for Postfix (main.cf: tls_server_sni_maps = hash:<this>),
    # the configuration directory it is checked and reloaded with, and the commands.
    "VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP": "/etc/postfix/modoboa-virtualhosts-sni",
    "VIRTUALHOSTS_MAIL_POSTFIX_CONFIG_DIR": "/etc/postfix",
    "VIRTUALHOSTS_MAIL_POSTFIX_COMMAND": ["postfix"],
    "VIRTUALHOSTS_MAIL_POSTMAP_COMMAND": ["postmap"],
    # The file the plugin writes for Dovecot (dovecot.conf: !include_try <this>), the main
    # configuration file doveconf checks, and the commands.
    "VIRTUALHOSTS_MAIL_DOVECOT_INCLUDE": "/etc/dovecot/modoboa-virtualhosts-sni.conf",
    "VIRTUALHOSTS_MAIL_DOVECOT_CONFIG": "/etc/dovecot/dovecot.conf",
    "VIRTUALHOSTS_MAIL_DOVECOT_COMMAND": ["dovecot"],
    "VIRTUALHOSTS_MAIL_DOVECONF_COMMAND": ["doveconf"],
    "VIRTUALHOSTS_MAIL_DOVEADM_COMMAND": ["doveadm"],
    # After each mail deploy, a handshake with SNI on each of these ports (at
    # VIRTUALHOSTS_VERIFY_ADDRESS) must present the new certificate. Keys are services
    # (smtp, submission, submissions, imap, imaps, pop3, pop3s); remove those not enabled.
    "VIRTUALHOSTS_MAIL_VERIFY_PORTS": {
        "smtp": 25,
        "submission": 587,
        "submissions": 465,
        "imap": 143,
        "imaps": 993,
        "pop3": 110,
        "pop3s": 995,
    },
    # Where the UI's "Documentation" link points; None: the package's Documentation URL.
    "VIRTUALHOSTS_DOCS_URL": None,
    # The Virtual hosts page that alert emails link to; None: <the address Modoboa's web
    # interface signs in from>/admin/virtualhosts (from its OAuth application).
    "VIRTUALHOSTS_PAGE_URL": None,
}


def get(name: str) -> Any:
    """Return setting ``name`` from Django settings, or its documented default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown modoboa_pro.virtualhosts setting {name}")
    return getattr(settings, name, DEFAULTS[name])


def renewal_spread() -> datetime.timedelta:
    """``VIRTUALHOSTS_RENEWAL_SPREAD`` as a duration (0 turns the spread off)."""
    return datetime.timedelta(seconds=max(float(get("VIRTUALHOSTS_RENEWAL_SPREAD")), 0.0))


def pause_after() -> datetime.timedelta | None:
    """``VIRTUALHOSTS_PAUSE_AFTER_DAYS`` as a duration; None: never pause."""
    days = float(get("VIRTUALHOSTS_PAUSE_AFTER_DAYS") or 0)
    return datetime.timedelta(days=days) if days > 0 else None


def tlsa_ports() -> tuple[int, ...]:
    return parse_tlsa_ports(get("VIRTUALHOSTS_TLSA_PORTS"))


def parse_tlsa_ports(value: object) -> tuple[int, ...]:
    """VIRTUALHOSTS_TLSA_PORTS as port numbers (ConfigurationError when it is not a list
    of them: a wrong list would check the wrong names). Read by mail hosts' runs only, so
    that a mistake there never stops the web hosts' renewals (system check E014)."""
    try:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(value)
        ports = tuple(value)
        numbers = all(isinstance(port, int) and not isinstance(port, bool) for port in ports)
        if not ports or not numbers or not all(0 < port < 65536 for port in ports):
            raise ValueError(value)
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"VIRTUALHOSTS_TLSA_PORTS is {value!r}: expected a list of port numbers, such "
            "as [25] or [25, 465, 587]."
        ) from err
    return ports


def docs_url() -> str:
    """The product documentation: the setting, else the URL the installed package declares."""
    configured = get("VIRTUALHOSTS_DOCS_URL")
    if configured:
        return str(configured)
    from importlib import metadata

    try:
        urls = metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "documentation":
            return url.strip()
    return DOCS_FALLBACK


DISTRIBUTION = "modoboa-pro"
DOCS_FALLBACK = "https://pypi.org/project/modoboa-pro/"


# The app name Modoboa files the parameters of ``parameters.py`` under.
PARAMETERS_APP = "virtualhosts"
# Their documented defaults (docs/configuration.md), the Settings page's fields' too.
PARAMETER_DEFAULTS: dict[str, Any] = {
    "enable_letsencrypt": False,
    "acme_account_email": "",
    "acme_account_storage_path": "/var/lib/modoboa/acme",
    "certificate_renewal_threshold": 30,
    "enable_alert_emails": True,
    "alert_recipients": "",
}


def param(name: str) -> Any:
    """Return the current value of the Modoboa global parameter ``name`` (Settings page)."""
    from modoboa.parameters import tools as param_tools

    return param_tools.get_global_parameter(name, app=PARAMETERS_APP)


def params() -> dict[str, Any]:
    """Every global parameter of the app at once (one read instead of one per ``param``: the
    retry sweep runs every 5 minutes), as Modoboa gives them: the stored values over the
    defaults (``PARAMETER_DEFAULTS``).

    Read from the ``LocalConfig`` row itself: Modoboa's way builds a ``LocalConfig``, which
    builds every app's parameter defaults (Modoboa's own run ``doveadm pw -l``), 5 to 15 ms
    in every job of a run.
    """
    from modoboa.core.models import LocalConfig

    stored = LocalConfig.objects.order_by("pk").values_list("_parameters", flat=True).first()
    ours = (stored or {}).get(PARAMETERS_APP) or {}
    return {name: ours.get(name, default) for name, default in PARAMETER_DEFAULTS.items()}

"""Django system checks for what an operator can get wrong (ids virtualhosts.E0xx/W0xx)."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from django.conf import settings
from django.core import checks

from . import budget, conf, constants, queueing
from .adapters import preflight
from .errors import ConfigurationError


def _queue_errors() -> list[checks.CheckMessage]:
    queues = getattr(settings, "RQ_QUEUES", {}) or {}
    errors: list[checks.CheckMessage] = []
    for name, cid, why in (
        (constants.QUEUE_DEFAULT, "virtualhosts.E001", "provisioning and renewal jobs run there"),
        (
            constants.QUEUE_PRIVILEGED,
            "virtualhosts.E002",
            "nginx tests and reloads run there, as root",
        ),
    ):
        if name not in queues:
            errors.append(
                checks.Error(
                    f"RQ_QUEUES has no {name!r} queue; {why}.",
                    hint=f"Add a {name!r} entry to RQ_QUEUES "
                    "(modoboa-admin.py deploy generates it).",
                    id=cid,
                )
            )
    return errors


def _command_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for setting, cid in (
        ("VIRTUALHOSTS_NGINX_TEST_COMMAND", "virtualhosts.E003"),
        ("VIRTUALHOSTS_NGINX_RELOAD_COMMAND", "virtualhosts.E004"),
    ):
        argv = conf.get(setting)
        if (
            not isinstance(argv, list | tuple)
            or not argv
            or not all(isinstance(a, str) for a in argv)
        ):
            errors.append(
                checks.Error(
                    f"{setting} must be a non-empty list of strings "
                    "(an argv, run without a shell).",
                    hint=f"e.g. {setting} = {conf.DEFAULTS[setting]!r}",
                    id=cid,
                )
            )
            continue
        binary = argv[0]
        found = os.access(binary, os.X_OK) if os.path.isabs(binary) else shutil.which(binary)
        # The privileged worker usually has /usr/sbin in PATH even when this process does not.
        if not found and not os.path.isabs(binary):
            found = any(os.access(os.path.join(d, binary), os.X_OK) for d in ("/usr/sbin", "/sbin"))
        if not found:
            errors.append(
                checks.Error(
                    f"{binary!r} ({setting}) was not found or is not executable.",
                    hint="Install nginx, or set the full path of the nginx binary in the command.",
                    id=cid,
                )
            )
    return errors


def _directory_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    conf_dir = conf.get("VIRTUALHOSTS_NGINX_CONF_DIR")
    if not os.path.isabs(str(conf_dir)):
        errors.append(
            checks.Error(
                f"VIRTUALHOSTS_NGINX_CONF_DIR must be an absolute path (got {conf_dir!r}).",
                id="virtualhosts.E005",
            )
        )
    elif not _writable_or_creatable(conf_dir):
        errors.append(
            checks.Error(
                f"The nginx site directory {conf_dir} is not writable by this user.",
                hint="Create it and give it to the user running Modoboa's workers; "
                "include it from nginx.conf (see docs/nginx.md).",
                id="virtualhosts.E006",
            )
        )
    return errors


def _writable_or_creatable(path: str) -> bool:
    probe = os.path.normpath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)


def _setting_errors() -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for setting in ("VIRTUALHOSTS_HTTP_PORT", "VIRTUALHOSTS_HTTPS_PORT"):
        port = conf.get(setting)
        if not isinstance(port, int) or not 0 < port < 65536:
            errors.append(
                checks.Error(
                    f"{setting} must be a TCP port number (got {port!r}).", id="virtualhosts.E007"
                )
            )
    mode = conf.get("VIRTUALHOSTS_RELOAD_MODE")
    if mode not in ("privileged", "local"):
        errors.append(
            checks.Error(
                f"VIRTUALHOSTS_RELOAD_MODE must be 'privileged' or 'local' (got {mode!r}).",
                id="virtualhosts.E008",
            )
        )
    bundle = conf.get("ACME_CA_BUNDLE")
    if bundle and not os.path.isfile(bundle):
        errors.append(
            checks.Error(
                f"ACME_CA_BUNDLE points at {bundle}, which is not a file.",
                hint="Set it to a PEM file, or remove it to trust the system store.",
                id="virtualhosts.E009",
            )
        )
    url = str(conf.get("ACME_DIRECTORY_URL"))
    if not url.startswith("https://"):
        errors.append(
            checks.Error(
                f"ACME_DIRECTORY_URL must be an https:// URL (got {url!r}).",
                id="virtualhosts.E010",
            )
        )
    return errors


def _profile_and_preflight_errors() -> list[checks.CheckMessage]:
    """The forms only: which profiles the CA offers is checked at each order (no network
    here, where every management command runs the checks)."""
    errors: list[checks.CheckMessage] = []
    profile = conf.get("ACME_PROFILE")
    if profile is not None and not (
        isinstance(profile, str) and re.fullmatch(constants.ACME_PROFILE_PATTERN, profile)
    ):
        errors.append(
            checks.Error(
                f"ACME_PROFILE must be the name of a profile the CA offers (got {profile!r}).",
                hint="e.g. ACME_PROFILE = 'tlsserver'; None for the CA's default.",
                id="virtualhosts.E011",
            )
        )
    resolver = conf.get("VIRTUALHOSTS_PREFLIGHT_RESOLVER")
    if resolver is not None:
        try:
            preflight.parse_resolver(str(resolver))
        except ConfigurationError as err:
            errors.append(
                checks.Error(
                    err.message, hint="None asks the system's resolver.", id="virtualhosts.E012"
                )
            )
    try:
        budget.from_setting(conf.get("VIRTUALHOSTS_ORDER_BUDGET"))
    except ConfigurationError as err:
        errors.append(
            checks.Error(
                err.message,
                hint="e.g. {'orders_per_account': 300, 'headroom_for_new_hosts': 30}; "
                "{} for Let's Encrypt's limits, None for no budget.",
                id="virtualhosts.E013",
            )
        )
    try:
        conf.parse_tlsa_ports(conf.get("VIRTUALHOSTS_TLSA_PORTS"))
    except ConfigurationError as err:
        errors.append(
            checks.Error(err.message, hint="The default is [25].", id="virtualhosts.E014")
        )
    return errors


def _renewal_warnings() -> list[checks.CheckMessage]:
    """Certificates exist but the daily renewal scan has not run: they will expire silently."""
    from django.db import DatabaseError

    from .alarms import staleness

    try:
        reason = staleness()
    except DatabaseError:
        return []  # no database yet (before migrate): nothing to renew either
    if reason is None:
        return []
    return [
        checks.Warning(
            reason,
            hint="Add check_certificate_renewals to cron_config.py and run "
            "`python manage.py rqcron <path to cron_config.py>` under your process "
            "supervisor (see docs/renewal.md).",
            id="virtualhosts.W001",
        )
    ]


def _database_warnings() -> list[checks.CheckMessage]:
    """SQLite without IMMEDIATE transactions fails requests while the workers write."""
    database = settings.DATABASES.get("default", {})
    if "sqlite3" not in str(database.get("ENGINE", "")):
        return []
    if str(database.get("OPTIONS", {}).get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [
        checks.Warning(
            "The database is SQLite without IMMEDIATE transactions: while the workers record "
            "provisioning steps, some requests (logins, API calls) fail with 'database is "
            "locked' (HTTP 500).",
            hint='Add to settings.py: DATABASES["default"].setdefault("OPTIONS", {}).update('
            'transaction_mode="IMMEDIATE", timeout=20) (see docs/installation.md).',
            id="virtualhosts.W003",
        )
    ]


@checks.register()
def check_virtualhosts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report misconfigurations that would make provisioning fail later, silently."""
    return (
        _queue_errors()
        + _command_errors()
        + _directory_errors()
        + _setting_errors()
        + _profile_and_preflight_errors()
        + _database_warnings()
    )




def _scheduler_warnings() -> list[checks.CheckMessage]:
    """RQ cron schedulers run, but none of them knows the renewal scan."""
    import django_rq
    from redis.exceptions import RedisError
    from rq.cron import CronScheduler

    try:
        schedulers = CronScheduler.all(django_rq.get_connection(constants.QUEUE_DEFAULT))
    except (RedisError, KeyError):
        return []
    if not schedulers or any(
        job.func_name == queueing.SCAN for scheduler in schedulers for job in scheduler.get_jobs()
    ):
        return []  # no scheduler running (W001 tells in time), or one has the scan
    return [
        checks.Warning(
            "The RQ cron scheduler is running without check_certificate_renewals: "
            "certificates will not be renewed.",
            hint="Add the register(...) lines of docs/renewal.md to cron_config.py, then "
            "restart rqcron.",
            id="virtualhosts.W002",
        )
    ]


@checks.register()
def check_renewal_scan(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when the renewal scan is not scheduled or has not run for more than 26 hours."""
    return _renewal_warnings() + _scheduler_warnings()

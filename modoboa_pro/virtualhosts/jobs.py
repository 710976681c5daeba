"""RQ entry points: thin, take ids, build the real adapters, let the pipeline act.

``check_certificate_renewals`` is the daily scan registered in cron_config.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import django_rq

from . import conf, constants, parameters, pipeline
from .adapters import acme, locks, tls
from .adapters import nginx as nginx_adapter
from .adapters.reloader import LocalReloader, PrivilegedReloader, outcome_of

logger = logging.getLogger("modoboa.jobs")


def read_settings() -> pipeline.Settings:
    """Every setting and parameter, read now (they may change between runs)."""
    return pipeline.Settings(
        letsencrypt=bool(parameters.get("enable_letsencrypt")),
        email=str(parameters.get("acme_account_email") or ""),
        storage_root=Path(str(parameters.get("acme_account_storage_path"))),
        threshold_days=int(parameters.get("certificate_renewal_threshold")),
        directory_url=str(conf.get("ACME_DIRECTORY_URL")),
        ca_bundle=conf.get("ACME_CA_BUNDLE"),
        key_type=str(conf.get("ACME_KEY_TYPE")),
        order_timeout=float(conf.get("ACME_ORDER_TIMEOUT")),
        conf_dir=Path(str(conf.get("VIRTUALHOSTS_NGINX_CONF_DIR"))),
        http_port=int(conf.get("VIRTUALHOSTS_HTTP_PORT")),
        https_port=int(conf.get("VIRTUALHOSTS_HTTPS_PORT")),
        listen_address=str(conf.get("VIRTUALHOSTS_LISTEN_ADDRESS") or ""),
        upstream=str(conf.get("VIRTUALHOSTS_UPSTREAM")),
        upstream_protocol=str(conf.get("VIRTUALHOSTS_UPSTREAM_PROTOCOL")),
        verify_address=str(conf.get("VIRTUALHOSTS_VERIFY_ADDRESS")),
    )


def build_reloader():
    """The configured way to apply nginx changes."""
    if conf.get("VIRTUALHOSTS_RELOAD_MODE") == "local":
        return LocalReloader(
            conf.get("VIRTUALHOSTS_NGINX_TEST_COMMAND"),
            conf.get("VIRTUALHOSTS_NGINX_RELOAD_COMMAND"),
        )
    return PrivilegedReloader(
        django_rq.get_queue(constants.QUEUE_PRIVILEGED),
        nginx_test_and_reload,
        float(conf.get("VIRTUALHOSTS_RELOAD_TIMEOUT")),
    )


def build_context() -> pipeline.Context:
    settings = read_settings()
    connection = django_rq.get_connection(constants.QUEUE_DEFAULT)

    def make_acme(s: pipeline.Settings) -> acme.AcmeClient:
        return acme.AcmeClient(
            s.directory_url,
            storage_root=s.storage_root,
            email=s.email,
            ca_bundle=s.ca_bundle,
            order_timeout=s.order_timeout,
        )

    def lock(hostname: str) -> locks.HostLock:
        return locks.HostLock(connection, hostname, constants.HOST_LOCK_TTL)

    def served(hostname: str):
        return tls.fetch_served_certificate(settings.verify_address, settings.https_port, hostname)

    return pipeline.Context(
        settings=settings, reload=build_reloader(), acme=make_acme, lock=lock, served=served
    )


def provision_virtualhost(host_id: int) -> str:
    """Provision (or resume provisioning of) one host."""
    return pipeline.provision(host_id, build_context())


def renew_virtualhost(host_id: int) -> str:
    """Renew one host's certificate now, through the same chain."""
    return pipeline.provision(host_id, build_context(), force_order=True, kind="renewal")


def disable_virtualhost(host_id: int) -> str:
    """Remove a disabled host's site from nginx."""
    return pipeline.disable(host_id, build_context())


def remove_virtualhost(hostname: str) -> str | None:
    """Remove a deleted host's site and archive its certificate files."""
    archived = pipeline.remove(hostname, build_context())
    return str(archived) if archived else None


def nginx_test_and_reload() -> dict:
    """Privileged job (root worker): `nginx -t`, then reload. Takes no input at all."""
    outcome = outcome_of(
        lambda: nginx_adapter.test_and_reload(
            conf.get("VIRTUALHOSTS_NGINX_TEST_COMMAND"),
            conf.get("VIRTUALHOSTS_NGINX_RELOAD_COMMAND"),
        )
    )
    if outcome["ok"]:
        logger.info("nginx configuration tested and reloaded")
    else:
        logger.warning("nginx %s failed: %s", outcome["kind"], outcome["message"])
    return outcome

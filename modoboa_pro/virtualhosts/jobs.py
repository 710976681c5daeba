"""RQ entry points: thin, take ids, build the real adapters, let the pipeline act.

Enqueued by dotted path (``queueing``); ``check_certificate_renewals`` is the
daily scan registered in cron_config.py, ``retry_due_virtualhosts`` the retry sweep.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import django_rq
from redis import Redis
from redis.exceptions import RedisError

from . import alarms, alerting, conf, constants, context, mail, pipeline, queueing, retries, scan
from .adapters import acme, counters, locks, nginx_processes, tls
from .adapters import nginx as nginx_adapter
from .adapters.reloader import (
    LocalReloader,
    PrivilegedReloader,
    outcome_of,
    serve_reload_requests,
)
from .errors import QueueUnavailable
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")


def read_settings() -> context.Settings:
    """Every setting and parameter, read now (they may change between runs)."""
    params = conf.params()  # one read: each ``conf.param`` loads them all again
    return context.Settings(
        letsencrypt=bool(params["enable_letsencrypt"]),
        email=str(params["acme_account_email"] or ""),
        storage_root=Path(str(params["acme_account_storage_path"])),
        threshold_days=int(params["certificate_renewal_threshold"]),
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
        autoconfig_upstream=str(conf.get("VIRTUALHOSTS_AUTOCONFIG_UPSTREAM") or ""),
        autoconfig_upstream_protocol=str(
            conf.get("VIRTUALHOSTS_AUTOCONFIG_UPSTREAM_PROTOCOL") or ""
        ),
        verify_address=str(conf.get("VIRTUALHOSTS_VERIFY_ADDRESS")),
        renewal_spread=conf.renewal_spread(),
        preflight=bool(conf.get("VIRTUALHOSTS_PREFLIGHT")),
        preflight_resolver=conf.get("VIRTUALHOSTS_PREFLIGHT_RESOLVER") or None,
        acme_profile=conf.get("ACME_PROFILE") or None,
        order_budget=conf.get("VIRTUALHOSTS_ORDER_BUDGET"),
        mail_keep_key=bool(conf.get("VIRTUALHOSTS_MAIL_KEEP_KEY")),
        tlsa_ports_setting=conf.get("VIRTUALHOSTS_TLSA_PORTS"),
        reloads_confirmed=reloads_confirmed(),
    )


def nginx_pid_file() -> Path | None:
    """``VIRTUALHOSTS_NGINX_PID_FILE`` as a path (None: reloads do not wait for nginx)."""
    value = conf.get("VIRTUALHOSTS_NGINX_PID_FILE")
    return Path(value) if value else None


def reloads_confirmed() -> bool:
    """Whether reloads wait for nginx's old workers: its pid file names a running master."""
    pid_file = nginx_pid_file()
    return pid_file is not None and nginx_processes.read_master(pid_file) is not None


def build_reloader(connection: Redis | None = None):
    """The configured way to apply nginx changes (coalesced through Redis); ``connection``:
    the default queue's, when the caller has one already."""
    timeout = float(conf.get("VIRTUALHOSTS_RELOAD_TIMEOUT"))
    if conf.get("VIRTUALHOSTS_RELOAD_MODE") == "local":
        return LocalReloader(
            conf.get("VIRTUALHOSTS_NGINX_TEST_COMMAND"),
            conf.get("VIRTUALHOSTS_NGINX_RELOAD_COMMAND"),
            connection or django_rq.get_connection(constants.QUEUE_DEFAULT),
            pid_file=nginx_pid_file(),
            timeout=timeout,
        )
    queue = django_rq.get_queue(constants.QUEUE_PRIVILEGED)
    return PrivilegedReloader(
        queue,
        queueing.RELOAD,
        timeout,
        listeners=lambda: queueing.listening_workers(queue),
        runs_queued=lambda: queueing.runs_queued(connection),
    )


def build_mail_deployer(connection: Redis | None = None):
    """The configured way to deploy to the mail services (as reloads: local or privileged)."""
    timeout = float(conf.get("VIRTUALHOSTS_RELOAD_TIMEOUT"))
    if conf.get("VIRTUALHOSTS_RELOAD_MODE") == "local":
        return mail.LocalMailDeployer(
            connection or django_rq.get_connection(constants.QUEUE_DEFAULT), timeout=timeout
        )
    queue = django_rq.get_queue(constants.QUEUE_PRIVILEGED)
    return mail.PrivilegedMailDeployer(
        queue,
        queueing.MAIL_DEPLOY,
        timeout,
        listeners=lambda: queueing.listening_workers(queue),
        runs_queued=lambda: queueing.runs_queued(connection),
    )


def make_acme(s: context.Settings, connection: Redis | None = None) -> acme.AcmeClient:
    """The CA's client; its requests are counted through ``connection`` (the default
    queue's): django_rq opens a new Redis connection on every call for one."""
    counted = connection or django_rq.get_connection(constants.QUEUE_DEFAULT)
    return acme.AcmeClient(
        s.directory_url,
        storage_root=s.storage_root,
        email=s.email,
        ca_bundle=s.ca_bundle,
        order_timeout=s.order_timeout,
        observer=lambda request: count_acme_request(counted, request),
    )


def count_acme_request(connection: Redis, request: acme.AcmeRequest) -> None:
    """The metrics' ACME request counters (``metrics``), in Redis for every worker."""
    counters.count_acme_request(
        connection,
        request.host,
        request.method,
        request.action,
        request.status,
        request.seconds,
    )


def build_context() -> context.Context:
    settings = read_settings()
    # One connection for the run's own Redis work (locks, reload book, counters).
    connection = django_rq.get_connection(constants.QUEUE_DEFAULT)

    def lock(hostname: str, *, wait: datetime.timedelta = datetime.timedelta(0)):
        return locks.HostLock(connection, hostname, constants.HOST_LOCK_TTL, wait=wait)

    def served(hostname: str):
        return tls.fetch_served_certificate(settings.verify_address, settings.https_port, hostname)

    return context.Context(
        settings=settings,
        reload=build_reloader(connection),
        acme=lambda s: make_acme(s, connection),
        lock=lock,
        served=served,
        mail_settings=mail.read_settings(),
        mail=build_mail_deployer(connection),
        mail_served=mail.fetch(settings.verify_address),
    )


def renewal_context() -> context.Context:
    """Renewals reload nginx in a follow-up job, so that a burst shares one reload."""
    ctx = build_context()
    ctx.defer = defer_finish_renewal
    return ctx


def defer_finish_renewal(host_id: int, generation: int, run_id: str) -> None:
    """Queue the second half of a renewal behind the renewals already queued."""
    try:
        queueing.queue().enqueue(
            queueing.FINISH_RENEWAL,
            host_id,
            generation,
            run_id,
            job_id=queueing.job_id(queueing.FINISH_RENEWAL, host_id),
            job_timeout=queueing.CHAIN_JOB_TIMEOUT,
        )
    except RedisError as err:
        raise QueueUnavailable(
            f"Cannot reach Redis to queue the end of the renewal ({err}). The new "
            "certificate is stored; the retry reloads nginx and checks that it is served.",
        ) from err


def provisioning_context() -> context.Context:
    """New hosts' sites are loaded by reloads shared with the other new hosts."""
    ctx = build_context()
    ctx.defer_step = defer_continue_provisioning
    return ctx


# The job that goes on after each step a new host's run defers.
CONTINUATIONS = {
    constants.STEP_HTTP_SITE: queueing.AFTER_HTTP_SITE,
    constants.STEP_HTTPS_SITE: queueing.FINISH_PROVISIONING,
}


def defer_continue_provisioning(host_id: int, generation: int, run_id: str, step: str) -> None:
    """Queue the rest of a provisioning run behind the new hosts already queued."""
    path = CONTINUATIONS[step]
    try:
        queueing.queue().enqueue(
            path,
            host_id,
            generation,
            run_id,
            job_id=queueing.job_id(path, host_id),
            job_timeout=queueing.CHAIN_JOB_TIMEOUT,
        )
    except RedisError as err:
        raise QueueUnavailable(
            f"Cannot reach Redis to queue the rest of the provisioning ({err}). The site "
            "file is written; the retry has nginx load it and goes on.",
        ) from err


def provision_virtualhost(host_id: int) -> str:
    """Provision (or resume provisioning of) one host."""
    status = pipeline.provision(host_id, provisioning_context())
    _check_scan_alive()
    return status


def provision_after_http_site(host_id: int, generation: int, run_id: str) -> str:
    """A new host's run, once the reload shared with other new hosts loaded its site."""
    return _continue(host_id, generation, run_id, constants.STEP_HTTP_SITE)


def finish_provisioning(host_id: int, generation: int, run_id: str) -> str:
    """A new host's run, once the reload shared with other new hosts loaded its HTTPS site."""
    return _continue(host_id, generation, run_id, constants.STEP_HTTPS_SITE)


def _continue(host_id: int, generation: int, run_id: str, step: str) -> str:
    ctx = provisioning_context()
    status = pipeline.continue_provisioning(host_id, ctx, generation, run_id, step)
    _check_scan_alive()
    return status


def renew_virtualhost(host_id: int, force: bool = False) -> str:
    """Renew one host's certificate: when due (the scan, retries), or now (``force``)."""
    status = pipeline.renew(host_id, renewal_context(), force=force)
    _check_scan_alive()
    return status


def finish_renewal(host_id: int, generation: int, run_id: str) -> str:
    """Wait for the nginx reload shared by queued renewals, verify, record."""
    status = pipeline.finish_renewal(host_id, build_context(), generation, run_id)
    _check_scan_alive()
    return status


def disable_virtualhost(host_id: int) -> str:
    """Remove a disabled host's site from nginx, after the run in progress if any."""
    return pipeline.disable(host_id, build_context())


def remove_virtualhost(hostname: str) -> str | None:
    """Remove a deleted host's site and archive its certificate files."""
    archived = pipeline.remove(hostname, build_context())
    return str(archived) if archived else None


def nginx_test_and_reload() -> dict:
    """Privileged job (root worker): `nginx -t`, then reload. Takes no input at all.

    One run serves every change requested before it started (see
    ``adapters.reloader``): a burst of renewals shares a few reloads.
    """

    def run() -> dict:
        return outcome_of(
            lambda: nginx_adapter.test_and_reload(
                conf.get("VIRTUALHOSTS_NGINX_TEST_COMMAND"),
                conf.get("VIRTUALHOSTS_NGINX_RELOAD_COMMAND"),
                pid_file=nginx_pid_file(),
            )
        )

    outcome = serve_reload_requests(
        django_rq.get_connection(constants.QUEUE_PRIVILEGED),
        run,
        timeout=float(conf.get("VIRTUALHOSTS_RELOAD_TIMEOUT")),
    )
    if outcome["ok"]:
        logger.info("nginx configuration tested and reloaded")
    else:
        logger.warning("nginx %s failed: %s", outcome["kind"], outcome["message"])
    return outcome


def mail_deploy() -> dict:
    """Privileged job (root worker): rewrite the Postfix SNI map and the Dovecot include from
    the database, check them, reload both services. Takes no input at all.

    One run serves every deploy requested before it started (``mail.MailDeployer``).
    """
    connection = django_rq.get_connection(constants.QUEUE_PRIVILEGED)

    def count(service: str, ok: bool) -> None:
        counters.count_reload(connection, service, ok)

    outcome = serve_reload_requests(
        connection,
        lambda: mail.outcome_of(lambda: mail.deploy_all(count)),
        timeout=float(conf.get("VIRTUALHOSTS_RELOAD_TIMEOUT")),
        prefix=mail.MAIL_KEY_PREFIX,
    )
    if outcome["ok"]:
        logger.info("mail deploy: %s", outcome["output"])
    else:
        logger.warning("mail deploy failed: %s", outcome["message"])
    return outcome


# -- automatic renewal ------------------------------------------------------


def check_certificate_renewals() -> dict:
    """The daily scan (cron_config.py): enqueue one renewal per due host on ``modoboa``."""
    settings = read_settings()
    if not settings.letsencrypt:
        logger.warning(
            "certificate renewal scan: Let's Encrypt is disabled in Settings > Virtual hosts; "
            "no certificate is renewed"
        )
    report = scan.run(
        settings.storage_root,
        settings.threshold_days,
        _enqueue_scheduled_renewal if settings.letsencrypt else None,
        ari_source=(lambda: make_acme(settings)) if settings.letsencrypt else None,
        spread=settings.renewal_spread,
    )
    retried = retry_due_virtualhosts()  # the safety net when the retry cron is not set up
    return {
        "seen": report.seen,
        "due": report.due,
        "enqueued": report.enqueued,
        "already_queued": report.already_queued,
        "requeued": report.requeued,  # lost with a Redis restart during the scan
        "not_queued": report.not_queued,  # Redis unreachable: the scan was interrupted
        "unreadable": report.unreadable,
        "expired": report.expired,
        "retried": retried["retried"],
        "summary": report.summary(),
    }


def _enqueue_scheduled_renewal(host: VirtualHost) -> bool:
    return queueing.enqueue_once(
        queueing.RENEW, host.pk, host.pk, False, description=f"renew {host.hostname}"
    )


def retry_due_virtualhosts() -> dict:
    """Every few minutes (cron_config.py): retry failed runs whose time has come, and hosts
    a crash left pending or provisioning."""
    params = conf.params()
    report = retries.run(letsencrypt=bool(params["enable_letsencrypt"]))
    return {
        "retried": report.retried,
        "renewed": report.renewed,
        "busy": report.busy,
        "summary": report.summary(),
        "alert_emails": _send_alerts(params),
    }


def _send_alerts(params: dict) -> int:
    """The alert emails (``alerting``): here, because the sweep runs every few minutes and
    the daily scan runs it too. Never fails the sweep: retries matter more than emails."""
    try:
        return alerting.check(params=params).sent
    except Exception:
        logger.exception("Cannot check for alert emails to send")
        return 0


def _check_scan_alive() -> None:
    """Open the alarm when the daily scan stopped running (jobs run even when rqcron does not)."""
    try:
        alarms.refresh_staleness_alarm()
    except Exception:  # never fail a run over this warning
        logger.exception("Cannot check when the certificate renewal scan last ran")

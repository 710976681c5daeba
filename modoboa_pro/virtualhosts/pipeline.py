"""The chain: ``provision``, ``renew``, ``disable``, ``remove``: lock -> re-check -> act -> record.

HTTP-only site, ACME account, order, store the pair, HTTPS site, verify the
served certificate. Each step is idempotent, so a retry (or a run after a
crash) skips what is already done and never places a needless order. Whether
to order is ``policy.decide``; what a run writes is ``recording``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

from django.utils import timezone

from . import budget, constants, dane, order_ledger, policy, recording, renewal_info
from .adapters import files, mailprobe, nginx, preflight, probe, storage, webroot, x509
from .adapters.acme import ProfileChoice
from .adapters.x509 import CertificateFacts
from .context import Context, Settings
from .errors import (
    AcmeError,
    AcmeValidationFailed,
    ForeignConfigBroken,
    LockHeld,
    MailError,
    MailNotVerified,
    NginxConfigTestFailed,
    NginxError,
    OrderBudgetExhausted,
    PrivilegedWorkerMissing,
    ReloadInterrupted,
    UnusablePair,
    VirtualHostError,
    redact_for_log,
)
from .models import VirtualHost
from .rendering import render_http_only, render_https

logger = logging.getLogger("modoboa.jobs")
_T = TypeVar("_T")

DEFERRED_RELOAD = "nginx reload queued with the other new hosts'"
SHARED_RELOAD = "one nginx reload shared with the other new hosts"
HTTP_KEPT = "nginx keeps serving the HTTP-only site"


def provision(host_id: int, ctx: Context) -> str:
    """Provision (or resume provisioning of) one host; return its status, or gone/busy."""
    return _run_chain(host_id, ctx, kind=constants.KIND_PROVISION, force_order=False)


def renew(host_id: int, ctx: Context, *, force: bool = False) -> str:
    """Renew one host's certificate through the same chain.

    Without ``force`` (the scan, retries), the order is placed only if
    ``policy.decide`` still says so under the host lock: a host renewed
    meanwhile only gets its served certificate verified.
    """
    return _run_chain(host_id, ctx, kind=constants.KIND_RENEWAL, force_order=force)


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _run_chain(host_id: int, ctx: Context, *, kind: str, force_order: bool) -> str:
    host = VirtualHost.objects.filter(pk=host_id).first()
    if host is None:
        logger.info("virtualhost #%s: gone before its %s ran; nothing to do", host_id, kind)
        return constants.RESULT_GONE
    try:
        with ctx.lock(host.hostname):
            # Re-check under the lock: another run may have finished, the admin may
            # have disabled or deleted the host.
            host = VirtualHost.objects.filter(pk=host_id).first()
            if host is None:
                return constants.RESULT_GONE
            if not host.enabled:
                logger.info("virtualhost %s: disabled; %s skipped", host.hostname, kind)
                return constants.STATUS_DISABLED
            run = recording.Run(host, _new_run_id(), kind)
            recording.mark_status(host, constants.STATUS_PROVISIONING)
            logger.info("virtualhost %s: %s started", host.hostname, kind)
            with recording.outcome(run) as result:
                result.status = _chain(host, run, ctx, force_order=force_order)
            return result.status
    except LockHeld:
        logger.info("virtualhost %s: another run is in progress; %s skipped", host.hostname, kind)
        return constants.RESULT_BUSY


def _chain(host: VirtualHost, run: recording.Run, ctx: Context, *, force_order: bool) -> str:
    if (deferred := _http_site(run, ctx, host)) is not None:
        _queue_follow_up(run, ctx, host, constants.STEP_HTTP_SITE, deferred)
        return constants.STATUS_PROVISIONING  # continue_provisioning goes on
    return _after_http_site(host, run, ctx, force_order=force_order)


def _after_http_site(
    host: VirtualHost, run: recording.Run, ctx: Context, *, force_order: bool
) -> str:
    """The chain once nginx serves the host's challenge path."""
    s = ctx.settings
    if not s.letsencrypt:
        recording.mark_success(
            host, None, status=constants.STATUS_HTTP_ONLY, threshold_days=s.threshold_days
        )
        logger.info(
            "virtualhost %s: served over HTTP only (Let's Encrypt is disabled)", host.hostname
        )
        return constants.STATUS_HTTP_ONLY

    stored = storage.read_current(
        s.storage_root, host.hostname, issued_serial=host.cert_serial, repair=True
    )
    if stored.problem is not None:
        logger.warning("virtualhost %s: %s", host.hostname, stored.problem)
    if force_order and stored.facts and host.cert_serial not in ("", stored.facts.serial):
        # A pair newer than the one recorded: a run stored it for this request, then died
        # before recording it. It answers the request: serve it, order nothing more.
        recording.fulfil_renewal_request(host, timezone.now())
        force_order = False
    reason = _order_reason(stored, host, s, force_order)
    facts, renewed = _obtain(run, ctx, host.hostname, stored, reason)
    reloaded = _https_site(
        run, ctx, host, facts.serial, new_files=renewed is not None, renewal=bool(renewed)
    )
    if isinstance(reloaded, Deferred):
        _queue_follow_up(run, ctx, host, constants.STEP_HTTPS_SITE, reloaded)
    if reloaded is None or isinstance(reloaded, Deferred):
        # Deferred: finish_renewal (or continue_provisioning) records the outcome.
        return constants.STATUS_PROVISIONING
    _verify(run, ctx, host.hostname, facts.serial, reloaded=reloaded)
    _mail(run, ctx, host, facts)
    _tlsa(run, s, host)
    _succeed(host, facts, s, renewed=renewed)
    return constants.STATUS_ACTIVE


def _sweep_leftovers(s: Settings, hostname: str) -> None:
    """Remove the tokens (the CA's and the probes') a killed run of this host left.

    We hold the host's lock: any token recorded for it belongs to a dead run.
    """
    if left := webroot.sweep_leftovers(s.webroot, s.token_ledger(hostname)):
        logger.info(
            "virtualhost %s: removed %d challenge token(s) left by an interrupted run",
            hostname,
            len(left),
        )


class Deferred(NamedTuple):
    """A step whose site is written and whose reload is requested: the run goes on in
    ``continue_provisioning``, queued once the step is recorded (it completes that record)."""

    generation: int


def _queue_follow_up(
    run: recording.Run, ctx: Context, host: VirtualHost, step: str, deferred: Deferred
) -> None:
    """Queue the rest of the run behind the other new hosts (``Context.defer_step``): it goes
    on in ``continue_provisioning`` once a shared reload has loaded ``step``'s site. Called
    only once the step is recorded: a run killed before that queues nothing."""
    assert ctx.defer_step is not None
    ctx.defer_step(host.pk, deferred.generation, run.run_id, step)


def _http_site(run: recording.Run, ctx: Context, host: VirtualHost) -> Deferred | None:
    """Step 1: the HTTP-only site, seen served by nginx before the CA is asked anything.
    ``Deferred`` when a new site's reload is shared with the other new hosts."""
    s = ctx.settings
    hostname, site = host.hostname, host.site
    with run.step(constants.STEP_HTTP_SITE) as step:
        # nginx's workers (an unprivileged user) traverse the root to reach the webroot.
        files.ensure_dir(s.storage_root, constants.STORAGE_ROOT_MODE)
        files.ensure_dir(s.webroot, constants.WEBROOT_DIR_MODE)
        _sweep_leftovers(s, hostname)
        # Every run leaves this step only once nginx is seen serving the challenge path
        # for this name: a failed validation at the CA costs rate limit.
        current = _read_site(s.conf_dir, hostname)
        if current is None or "/.well-known/acme-challenge/" not in current:
            content = render_http_only(s.site_context(hostname, site))
            path = nginx.site_path(s.conf_dir, hostname)
            # Only a new site: there is no served configuration of this host to break.
            if deferred := _deploy_site(ctx, host, content, defer=current is None):
                step.message = f"HTTP-only site {path} written; {DEFERRED_RELOAD}"
                return deferred
            probe.preflight(s.endpoint, hostname)
            step.message = f"HTTP-only site {path} is served"
            return None
        ctx.reload.settle()  # one answer tells only once no reload hands over (``_verify``)
        if probe.serves_challenge(s.endpoint, hostname):
            step.skip("the site is in place and served")
            return None
        # Written but never loaded (a run stopped before its reload): load it now.
        ctx.reload()
        probe.preflight(s.endpoint, hostname)
        step.message = "the site file was in place but not loaded by nginx; reloaded"
    return None


def _obtain(
    run: recording.Run,
    ctx: Context,
    hostname: str,
    stored: storage.StoredCertificate,
    reason: str | None,
) -> tuple[CertificateFacts, bool | None]:
    """Steps 2-4: account, order, store, when ``reason`` says an order is needed.

    Returns the facts of the certificate to serve, and whether it renewed one
    (True), is a first one (False), or the current one is kept (None).
    """
    s = ctx.settings
    existing = stored.facts
    new_pair: tuple[bytes, bytes] | None = None
    ledger = s.token_ledger(hostname)
    with run.step(constants.STEP_ACCOUNT) as step:
        if reason is None:
            step.skip("no order needed")
        else:
            ca = ctx.ca()
            account = ca.ensure_account()
            step.message = f"account {getattr(account, 'uri', '')} ({s.email})"

    key = _order_key(run, s, stored) if reason is not None else None

    with run.step(constants.STEP_ORDER) as step:
        if reason is None:
            assert existing is not None
            step.skip(
                f"current certificate (serial {existing.serial}) "
                f"is valid until {existing.not_after:%Y-%m-%d}"
            )
        else:
            ordered_at = timezone.now()
            # A certificate we could not keep would still cost rate limit: check first.
            storage.check_writable(s.storage_root, hostname)
            _preflight(s, hostname)
            key_pem = key.pem if key is not None else x509.generate_private_key(s.key_type)
            csr_pem = x509.make_csr(hostname, key_pem)
            publisher = webroot.WebrootPublisher(s.webroot, ledger)
            # RFC 9773 5: a renewal names the certificate it replaces.
            replaces = existing.ari_id if existing is not None else ""
            limits = _spend_budget(s, run.host, existing)
            try:
                fullchain = ca.obtain_certificate(
                    hostname, csr_pem, publisher, replaces=replaces, profile=_profile(s, run.host)
                )
            except AcmeValidationFailed:
                if limits is not None:
                    order_ledger.record(
                        timezone.now(),
                        limits,
                        s.directory_url,
                        hostname,
                        budget.KIND_FAILED_VALIDATION,
                    )
                raise
            new_pair = (fullchain, key_pem)
            step.message = f"certificate issued ({reason})"

    with run.step(constants.STEP_STORE) as step:
        if new_pair is None:
            assert existing is not None
            step.skip("certificate files unchanged")
            return existing, None
        facts = x509.parse_leaf(new_pair[0])
        storage.write_certificate_pair(s.storage_root, hostname, new_pair[0], new_pair[1])
        recording.fulfil_renewal_request(run.host, ordered_at)
        step.message = f"serial {facts.serial}, expires {facts.not_after:%Y-%m-%d %H:%M} UTC"
        try:
            planned = renewal_info.ask(
                run.host, ca, facts, now=timezone.now(), threshold_days=s.threshold_days
            )
        except AcmeError as err:  # the certificate is stored: the daily scan asks again
            logger.warning("virtualhost %s: %s", hostname, err.message)
            planned = None
        if planned is not None:
            step.message += f"; renewal at {planned} (the CA's renewal window)"
    return facts, existing is not None


def _order_key(
    run: recording.Run, s: Settings, stored: storage.StoredCertificate
) -> dane.OrderKey | None:
    """A mail host's key decision, in its history (None: a fresh key, as web hosts get)."""
    if not run.host.serves_mail:
        return None
    with run.step(constants.STEP_KEY) as step:
        key = dane.order_key(s, run.host, stored)
        step.message = key.choice.reason
    return key


def _tlsa(run: recording.Run, s: Settings, host: VirtualHost) -> None:
    """A mail host's TLSA records against what it now serves; never fails the run."""
    if not host.serves_mail:
        return
    with run.step(constants.STEP_TLSA) as step:
        step.message = dane.check_after_run(s, host)


def _preflight(s: Settings, hostname: str) -> None:
    """What the CA will check, checked first (unless VIRTUALHOSTS_PREFLIGHT is off): a
    failed validation costs rate limit, a failed pre-flight nothing."""
    if not s.preflight:
        return
    addresses = preflight.check(
        hostname,
        resolver_spec=s.preflight_resolver,
        webroot_dir=s.webroot,
        ledger=s.token_ledger(hostname),
        port=s.http_port,
    )
    logger.info("virtualhost %s: pre-flight passed (%s)", hostname, ", ".join(addresses))


def _spend_budget(
    s: Settings, host: VirtualHost, existing: CertificateFacts | None
) -> budget.Budget | None:
    """Right before the new order: refuse it (OrderBudgetExhausted, retried when the budget
    allows) if it would exceed one of the CA's limits, else count it. A host without a
    certificate may use the headroom renewals leave; an ARI renewal is not counted."""
    limits = budget.from_setting(s.order_budget)
    if limits is None:
        return None
    now = timezone.now()
    exempt = existing is not None and budget.is_exempt(
        now, existing.ari_id, recording.stored_ari(host), existing.not_after
    )
    refusal = order_ledger.check(
        now, limits, s.directory_url, host.hostname, new_host=existing is None, exempt=exempt
    )
    if refusal is not None:
        raise OrderBudgetExhausted(refusal.message, retry_after=refusal.retry_at)
    order_ledger.record(
        now, limits, s.directory_url, host.hostname, budget.KIND_ORDER, exempt=exempt
    )
    return limits


def _profile(s: Settings, host: VirtualHost) -> ProfileChoice | None:
    """The ACME profile to ask for: the host's own (required), else the instance's
    (ACME_PROFILE, preferred), else none (the CA's default)."""
    if host.acme_profile:
        return ProfileChoice(host.acme_profile, required=True)
    if s.acme_profile:
        return ProfileChoice(s.acme_profile, required=False)
    return None


def _https_site(
    run: recording.Run,
    ctx: Context,
    host: VirtualHost,
    serial: str,
    *,
    new_files: bool,
    renewal: bool,
) -> bool | None | Deferred:
    """Step 5: the HTTPS site; whether nginx was reloaded. None when a renewal's reload is
    left to ``finish_renewal``, ``Deferred`` when a first site's is shared with the other
    new hosts.

    ``serial``: the certificate to serve. ``renewal``: new files replaced a previous
    pair, which a failed reload (or a pair found unusable) restores.
    """
    s = ctx.settings
    hostname = host.hostname
    with run.step(constants.STEP_HTTPS_SITE) as step:
        content = render_https(s.site_context(hostname, host.site))
        changed = _read_site(s.conf_dir, hostname) != content
        if not changed and not new_files:
            step.skip("HTTPS site already installed")
            return False
        try:
            _usable_pair(s, hostname, serial)
            if changed:
                # A first certificate: nginx serves only the HTTP-only site, which a
                # refused reload gets back (``continue_provisioning``).
                first = new_files and not renewal
                if deferred := _deploy_site(ctx, host, content, defer=first):
                    step.message = f"HTTPS site written; {DEFERRED_RELOAD}"
                    return deferred
                step.message = "HTTPS site installed and nginx reloaded"
                return True
            if ctx.defer is not None and (generation := ctx.reload.request()) is not None:
                # Same config, new files: any reload from now on serves them. Let the
                # renewals queued behind this one share a single reload.
                ctx.defer(host.pk, generation, run.run_id)
                step.message = "new certificate in place; nginx reload queued with other renewals"
                return None
            ctx.reload()  # same config, new files: nginx re-reads them on reload
            step.message = "nginx reloaded with the new certificate"
            return True
        except UnusablePair as err:
            first = new_files and not renewal  # nginx still has the HTTP-only site
            kept = "nginx keeps serving the HTTP-only site" if first else ""
            raise _not_deployed(err, s, hostname, roll_back=renewal, kept=kept) from err
        except NginxError as err:
            _after_refused_reload(err, s, hostname, new_pair=renewal)
            raise


def _verify(
    run: recording.Run, ctx: Context, hostname: str, serial: str, *, reloaded: bool
) -> None:
    s = ctx.settings
    with run.step(constants.STEP_VERIFY) as step:
        if not reloaded:
            # One answer shows what every nginx worker serves only once no reload is
            # handing over: one requested by an earlier run of this host may still be.
            ctx.reload.settle()
        if not reloaded and _served_serial(ctx, hostname) != serial:
            # nginx predates the files on disk (e.g. a run stopped between storing
            # the pair and reloading): reload before judging.
            try:
                _usable_pair(s, hostname, serial)
            except UnusablePair as err:
                raise _not_deployed(err, s, hostname, roll_back=False) from err
            ctx.reload()
            step.message = "nginx had not loaded the current certificate; reloaded. "
        served = probe.confirm_served(
            ctx.served, hostname, serial, s.https_port, stable=s.stable_answers
        )
        step.message += f"nginx serves serial {served.serial} issued by {served.issuer}"


def _mail(run: recording.Run, ctx: Context, host: VirtualHost, facts: CertificateFacts) -> None:
    """Steps 7-8, once the web site serves ``facts``: deploy it to Postfix and Dovecot by
    SNI (through the privileged worker), then see it on every mail port. A host no longer
    marked for mail is taken out of their files. A failure here says that the web site is
    fine, so that an operator looks at the mail services."""
    ms = ctx.mail_settings
    if ms is None or ctx.mail is None or not ms.enabled:
        return
    hostname, serial = host.hostname, facts.serial
    if not host.serves_mail:
        if ms.lists(hostname):  # unmarked since its last deploy
            recording.record_certificate(host, facts)
            with run.step(constants.STEP_MAIL_DEPLOY) as step:
                _deploy_mail(ctx, hostname, serial)
                step.message = "no longer serves mail: removed from Postfix's and Dovecot's SNI"
        return
    recording.record_certificate(host, facts)
    with run.step(constants.STEP_MAIL_DEPLOY) as step:
        ports = _web_fine(lambda: ms.ports_to_verify(), hostname, serial)
        if ports and _mail_serves(ctx, ports, hostname, serial):
            step.skip(f"every mail port already presents serial {serial}")
        else:
            step.message = _deploy_mail(ctx, hostname, serial)
    with run.step(constants.STEP_MAIL_VERIFY) as step:
        if not ports:
            step.skip("no mail port to verify (VIRTUALHOSTS_MAIL_VERIFY_PORTS)")
            return
        served = ctx.mail_served
        assert served is not None
        seen = _web_fine(
            lambda: mailprobe.confirm_all(served, ports, hostname, serial),
            hostname,
            serial,
        )
        step.message = f"serial {serial} presented on " + ", ".join(
            f"{s.service} ({s.port}, {s.program})" for s in seen
        )


def _deploy_mail(ctx: Context, hostname: str, serial: str) -> str:
    assert ctx.mail is not None
    return _web_fine(ctx.mail, hostname, serial)


def _mail_serves(ctx: Context, ports: dict[str, int], hostname: str, serial: str) -> bool:
    """One handshake per port: whether all already present ``serial`` (no exception)."""
    if ctx.mail_served is None:
        return False
    try:
        return all(ctx.mail_served(s, p, hostname).serial == serial for s, p in ports.items())
    except MailNotVerified:
        return False


def _web_fine(func: Callable[[], _T], hostname: str, serial: str) -> _T:
    """Run a mail step's action; its error says that the web site serves ``serial``."""
    try:
        return func()
    except (MailError, NginxError) as err:  # NginxError: Redis lost the deploy's answer
        prefix = (
            f"The web site of {hostname} serves its certificate (serial {serial}), but the "
            "mail services do not yet: "
        )
        cls = type(err) if isinstance(err, MailError) else MailError
        raise cls(prefix + err.message, output=getattr(err, "output", "")) from err


def _served_serial(ctx: Context, hostname: str) -> str | None:
    try:
        return ctx.served(hostname).serial
    except VirtualHostError:
        return None


def _succeed(
    host: VirtualHost, facts: CertificateFacts, s: Settings, *, renewed: bool | None
) -> None:
    """Record success; ``renewed`` is None when no new certificate was obtained."""
    recording.mark_success(
        host,
        facts,
        status=constants.STATUS_ACTIVE,
        threshold_days=s.threshold_days,
        spread=s.renewal_spread,
    )
    if renewed is not None:
        logger.info(
            "virtualhost %s: certificate %s (serial %s, issuer %s, expires %s)",
            host.hostname,
            "renewed" if renewed else "issued",
            facts.serial,
            facts.issuer,
            f"{facts.not_after:%Y-%m-%d %H:%M} UTC",
        )


def finish_renewal(host_id: int, ctx: Context, generation: int, run_id: str) -> str:
    """Second half of a deferred renewal: wait for the shared reload, verify, record."""

    def finish(host: VirtualHost, run: recording.Run) -> str:
        s = ctx.settings
        with run.step(constants.STEP_HTTPS_SITE) as step:
            try:
                # Checked again: the reload is shared, and the files may have
                # changed while this renewal waited in the queue.
                facts = _usable_pair(s, host.hostname, host.cert_serial)
                ctx.reload.wait(generation)
            except UnusablePair as err:
                raise _not_deployed(err, s, host.hostname, roll_back=True) from err
            except NginxError as err:
                _after_refused_reload(err, s, host.hostname, new_pair=True)
                raise
            step.message = "nginx reloaded (one reload shared by the queued renewals)"
        _verify(run, ctx, host.hostname, facts.serial, reloaded=True)
        _mail(run, ctx, host, facts)
        _tlsa(run, s, host)
        _succeed(host, facts, s, renewed=True)
        return constants.STATUS_ACTIVE

    # Another run holding the host verifies what nginx serves itself.
    return _resume(host_id, ctx, run_id, constants.KIND_RENEWAL, finish, same_run=False)


def continue_provisioning(
    host_id: int, ctx: Context, generation: int, run_id: str, step: str
) -> str:
    """The rest of a provisioning run deferred at ``step`` (a new site written): wait for
    the shared reload covering ``generation``, check what nginx serves, go on."""

    def go_on(host: VirtualHost, run: recording.Run) -> str:
        return _continue(host, run, ctx, generation, step)

    return _resume(host_id, ctx, run_id, constants.KIND_PROVISION, go_on, same_run=True)


def _resume(
    host_id: int,
    ctx: Context,
    run_id: str,
    kind: str,
    body: Callable[[VirtualHost, recording.Run], str],
    *,
    same_run: bool,
) -> str:
    """Go on with run ``run_id`` of a host in a follow-up job: lock, re-check, record.

    ``same_run``: stop if another run of the host began since (a retry did the rest)."""
    host = VirtualHost.objects.filter(pk=host_id).first()
    if host is None:
        return constants.RESULT_GONE
    try:
        with ctx.lock(host.hostname):
            host = VirtualHost.objects.filter(pk=host_id).first()
            if host is None:
                return constants.RESULT_GONE
            if not host.enabled:
                return constants.STATUS_DISABLED
            if same_run and _last_run_id(host) != run_id:
                logger.info("virtualhost %s: a later run took over; nothing to go on", host)
                return constants.RESULT_BUSY
            run = recording.Run(host, run_id, kind)
            with recording.outcome(run) as result:
                result.status = body(host, run)
            return result.status
    except LockHeld:
        logger.info("virtualhost %s: another run is in progress; it goes on", host.hostname)
        return constants.RESULT_BUSY


def _continue(
    host: VirtualHost, run: recording.Run, ctx: Context, generation: int, step: str
) -> str:
    s = ctx.settings
    hostname = host.hostname
    if step == constants.STEP_HTTP_SITE:
        with run.step(constants.STEP_HTTP_SITE, continued=True) as record:
            _reach_ca_early(ctx, hostname)
            _loaded_or_restored(s, hostname, None, lambda: ctx.reload.wait(generation))
            probe.preflight(s.endpoint, hostname)
            record.message = (
                f"HTTP-only site {nginx.site_path(s.conf_dir, hostname)} is served "
                f"({SHARED_RELOAD})"
            )
        return _after_http_site(host, run, ctx, force_order=False)
    # The HTTPS site of a first certificate: a refused reload gets the HTTP-only one back.
    http_only = render_http_only(s.site_context(hostname, host.site)).encode()
    with run.step(constants.STEP_HTTPS_SITE, continued=True) as record:
        try:
            # Checked again: the files may have changed while the run waited in the queue.
            facts = _usable_pair(s, hostname, "")
        except UnusablePair as err:
            # The shared reload may have loaded the HTTPS site: load the HTTP-only one again.
            apply_site(s, hostname, http_only.decode(), ctx.reload)
            raise _not_deployed(err, s, hostname, roll_back=False, kept=HTTP_KEPT) from err
        _loaded_or_restored(s, hostname, http_only, lambda: ctx.reload.wait(generation))
        record.message = f"HTTPS site installed ({SHARED_RELOAD})"
    _verify(run, ctx, hostname, facts.serial, reloaded=True)
    _mail(run, ctx, host, facts)
    _tlsa(run, s, host)
    _succeed(host, facts, s, renewed=False)
    return constants.STATUS_ACTIVE


def _reach_ca_early(ctx: Context, hostname: str) -> None:
    """While nginx loads a new host's HTTP-only site (its old workers leave 0.1 s after the
    new ones start), connect to the CA and find the account, which the order needs next.
    Nothing is ordered before the site is seen served. Best effort: the account step
    asks again, and records what fails."""
    if not ctx.settings.letsencrypt:
        return
    try:
        ctx.ca().ensure_account()
    except Exception as err:  # whatever it is, the account step meets it again and records it
        logger.info(
            "virtualhost %s: reaching the CA while nginx reloads failed (%s); the account "
            "step tries again",
            hostname,
            redact_for_log(err.message if isinstance(err, VirtualHostError) else repr(err)),
        )


def _last_run_id(host: VirtualHost) -> str | None:
    return host.events.order_by("-started_at", "-id").values_list("run_id", flat=True).first()


def _order_reason(
    stored: storage.StoredCertificate, host: VirtualHost, s: Settings, force: bool
) -> str | None:
    """Why a new order is needed, or None when the current certificate will do.

    The same decision as the scan's, without the backoff: this run is the retry.
    """
    decision = policy.decide_stored(
        timezone.now(),
        s.threshold_days,
        host.hostname,
        stored,
        spread=s.renewal_spread,
        ari=recording.stored_ari(host),
    )
    if decision.action in (policy.RENEW, policy.NO_CERTIFICATE):
        return decision.reason
    return "renewal requested" if force else None


def _read_site(conf_dir: Path, hostname: str) -> str | None:
    path = nginx.site_path(conf_dir, hostname)
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def apply_site(s: Settings, hostname: str, content: str, reload: Callable[[], str]) -> None:
    """Write a site, test and reload; on failure put the previous file back, unless
    nginx blames another file (ours is then not at fault, and kept for the retry)."""
    previous = nginx.write_site(s.conf_dir, hostname, content)
    _loaded_or_restored(s, hostname, previous, reload)


def _deploy_site(ctx: Context, host: VirtualHost, content: str, *, defer: bool) -> Deferred | None:
    """Write a site and have nginx load it now, or, with ``defer`` and
    ``Context.defer_step``, only request the reload that will (``Deferred``): the rest of
    the run then waits in the queue behind the other new hosts instead of holding a
    worker, and a burst shares reloads. Without Redis to coordinate, reload now."""
    s = ctx.settings
    if not defer or ctx.defer_step is None:
        apply_site(s, host.hostname, content, ctx.reload)
        return None
    previous = nginx.write_site(s.conf_dir, host.hostname, content)
    # Requested once the file is written: a reload that reads this generation reads it.
    generation = ctx.reload.request()
    if generation is None:
        _loaded_or_restored(s, host.hostname, previous, ctx.reload)
        return None
    return Deferred(generation)


def _loaded_or_restored(
    s: Settings, hostname: str, previous: bytes | None, reload: Callable[[], str]
) -> None:
    """Reload for a site just written; on failure put ``previous`` back (None: remove it),
    unless nginx blames another file."""
    try:
        reload()
    except NginxConfigTestFailed as err:
        _blame(err, s, hostname)
        nginx.restore_site(s.conf_dir, hostname, previous)
        raise
    except NginxError:
        nginx.restore_site(s.conf_dir, hostname, previous)
        raise


def _usable_pair(s: Settings, hostname: str, issued_serial: str) -> CertificateFacts:
    """The pair nginx is about to load, checked first (UnusablePair says why not).

    ``nginx -t`` must never see a pair it refuses: while it fails, no site's change
    can be loaded. An expired certificate or another name's is refused too.
    """
    stored = storage.read_current(
        s.storage_root, hostname, issued_serial=issued_serial, repair=True
    )
    if stored.problem is not None:
        raise UnusablePair(stored.problem)
    fullchain = storage.certificate_paths(s.storage_root, hostname)[0]
    if stored.facts is None:  # absent, and no serial recorded to call it missing
        raise UnusablePair(f"certificate unusable: {fullchain} is missing. {storage.REPLACED}")
    expired = policy.expired_problem(timezone.now(), stored.facts.not_after, fullchain)
    if expired is not None:
        raise UnusablePair(f"{expired}. {storage.REPLACED}")
    return stored.facts


def _not_deployed(
    err: UnusablePair, s: Settings, hostname: str, *, roll_back: bool, kept: str = ""
) -> UnusablePair:
    """The error saying an unusable pair was not handed to nginx; ``roll_back`` first puts
    back the previous pair, the one nginx serves."""
    if roll_back:
        storage.rollback_pair(s.storage_root, hostname)
        kept = "the previous certificate was put back, and nginx keeps serving it"
    kept = kept or "nginx keeps its current configuration"
    return UnusablePair(f"{err.message} Not deployed: {kept}; the run is retried.")


def _after_refused_reload(err: NginxError, s: Settings, hostname: str, *, new_pair: bool) -> None:
    """nginx refused the test or the reload: it still serves the previous pair, so put its
    files back (``new_pair``). Unless nginx blames another file (ForeignConfigBroken is
    raised instead), never got to run (no privileged worker), or may have run (Redis lost
    its answer): the new files then stay, and the next reload serves them, whoever runs it."""
    if isinstance(err, NginxConfigTestFailed) and not isinstance(err, ForeignConfigBroken):
        _blame(err, s, hostname)
    kept = ForeignConfigBroken | PrivilegedWorkerMissing | ReloadInterrupted
    if new_pair and not isinstance(err, kept):
        storage.rollback_pair(s.storage_root, hostname)


def _blame(err: NginxConfigTestFailed, s: Settings, hostname: str) -> None:
    """Raise ForeignConfigBroken when ``nginx -t`` names a file other than the host's own
    (its site, its certificate and key)."""
    culprit = nginx.failing_file(err.output)
    own = {
        nginx.site_path(s.conf_dir, hostname),
        *storage.certificate_paths(s.storage_root, hostname),
    }
    if culprit is None or culprit in own:
        return
    other = storage.pair_owner(s.storage_root, culprit)
    fix = (
        f"It is the certificate of {other}, unusable on disk: its renewal replaces it (the "
        f"daily scan plans it; Renew now on {other} does it at once)"
        if other
        else "Fix or remove that file"
    )
    raise ForeignConfigBroken(
        f"nginx -t fails because of {culprit}, not because of the site of {hostname} "
        f"({err.message}) {fix}; nginx keeps serving its current configuration meanwhile, "
        f"and {hostname} is retried.",
        output=err.output,
    ) from err


def remove_site(s: Settings, hostname: str, reload: Callable[[], str]) -> bool:
    """Remove a host's site and reload; restore it if nginx refuses the result."""
    previous = nginx.remove_site(s.conf_dir, hostname)
    if previous is None:
        return False
    try:
        reload()
    except NginxConfigTestFailed:
        nginx.restore_site(s.conf_dir, hostname, previous)
        raise
    probe.confirm_removed(s.endpoint, hostname)
    return True


def disable(host_id: int, ctx: Context) -> str:
    """Take a disabled host's site out of nginx (its certificate files are kept).

    Runs after the run in progress, if any: it waits for the host lock.
    """
    host = VirtualHost.objects.filter(pk=host_id).first()
    if host is None:
        return constants.RESULT_GONE
    try:
        with ctx.lock(host.hostname, wait=constants.HOST_LOCK_TTL):
            host = VirtualHost.objects.filter(pk=host_id).first()
            if host is None:
                return constants.RESULT_GONE  # the removal job takes over
            if host.enabled:
                return host.status  # re-enabled meanwhile: provisioning takes over
            run = recording.Run(host, _new_run_id(), constants.KIND_DISABLE)
            with recording.outcome(run) as result:
                with run.step(constants.STEP_REMOVE) as step:
                    if remove_site(ctx.settings, host.hostname, ctx.reload):
                        step.message = "site removed; nginx reloaded"
                    elif host.status != constants.STATUS_DISABLED:
                        # Gone from disk, but this disable never finished: its reload may
                        # not have happened (no privileged worker, Redis lost its answer),
                        # and nginx would serve the host until some other reload.
                        ctx.reload()
                        probe.confirm_removed(ctx.settings.endpoint, host.hostname)
                        step.message = "site file already removed; nginx reloaded"
                    else:
                        step.skip("no site file")
                _unlist_mail(run, ctx, host.hostname)
                recording.mark_disabled(host)
                result.status = constants.STATUS_DISABLED
            return result.status
    except LockHeld as err:  # held for longer than any run lasts: retried by the sweep
        recording.mark_failure(host, constants.STEP_REMOVE, err)
        return constants.STATUS_FAILED


def _unlist_mail(run: recording.Run | None, ctx: Context, hostname: str) -> None:
    """A disabled or deleted host: the mail deploy rewrites the files without it."""
    ms = ctx.mail_settings
    if ms is None or ctx.mail is None or not ms.enabled or not ms.lists(hostname):
        return
    if run is None:
        ctx.mail()
        logger.info("virtualhost %s: removed from Postfix's and Dovecot's SNI", hostname)
        return
    with run.step(constants.STEP_MAIL_DEPLOY) as step:
        ctx.mail()
        step.message = "removed from Postfix's and Dovecot's SNI"


def remove(hostname: str, ctx: Context) -> Path | None:
    """After a host was deleted: remove its site, archive its certificate files.

    Runs after the run in progress, if any: it waits for the host lock.
    """
    with ctx.lock(hostname, wait=constants.HOST_LOCK_TTL):
        if VirtualHost.objects.filter(hostname=hostname).exists():
            return None  # re-created meanwhile: keep everything
        remove_site(ctx.settings, hostname, ctx.reload)
        _unlist_mail(None, ctx, hostname)
        archived = storage.archive_host(ctx.settings.storage_root, hostname)
        logger.info(
            "virtualhost %s: deleted; site removed%s",
            hostname,
            f", certificate archived in {archived}" if archived else "",
        )
        return archived

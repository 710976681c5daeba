"""`manage.py virtualhosts`: status, retry, renew and the renewal scan from the shell.

Exit codes (for scripts and monitoring, documented in docs/operations.md): 0 all
fine, 1 the command failed, 2 bad usage (including a hostname that can never be
valid), 3 a host is failed or paused, 4 a certificate is overdue or expired, 5 the renewal
scan has not run for 26 hours.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from ... import (
    alarms,
    conf,
    constants,
    dane,
    domain_names,
    metrics,
    policy,
    presenters,
    scan,
    services,
)
from ...adapters import files
from ...errors import InvalidHostname, RunInProgress, VirtualHostError
from ...hostnames import normalize_hostname
from ...models import VirtualHost, validate_acme_profile

EMPTY = "-"
EXPIRES_COLUMN = 2  # of the `list` table: coloured by the certificate's state
# After a host name in the `list` table: its certificate also serves Postfix and Dovecot.
MAIL_MARK = " (mail)"

EXIT_OK = 0
EXIT_ERROR = 1  # the command could not do what was asked (unknown host, busy, config)
EXIT_USAGE = 2  # bad arguments (argparse), or a hostname that can never be valid
EXIT_FAILED = 3  # at least one enabled host is failed (or paused)
EXIT_OVERDUE = 4  # at least one certificate is overdue for renewal or expired
EXIT_SCAN_STALE = 5  # the renewal scan has not run for 26 h while hosts have certificates


def exit_code(hosts: Iterable[VirtualHost], threshold_days: int, now: datetime.datetime) -> int:
    """The worst state among ``hosts`` as an exit code for scripts and monitoring."""
    code = EXIT_OK
    for host in hosts:
        if presenters.is_overdue(host, threshold_days, now):
            return EXIT_OVERDUE
        if host.enabled and host.status in (constants.STATUS_FAILED, constants.STATUS_PAUSED):
            code = EXIT_FAILED
    return code


def _when(value: datetime.datetime | None) -> str:
    return f"{value.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC" if value else EMPTY


def _expires_in(host: VirtualHost, now: datetime.datetime, threshold_days: int) -> str:
    """Time left, then the certificate's state when it is not simply valid ("3d overdue")."""
    if host.cert_not_after is None:
        return EMPTY
    if host.cert_not_after <= now:
        return "expired"
    left = host.cert_not_after - now
    text = f"{int(left.total_seconds() // 3600)}h" if left < DAY else f"{left.days}d"
    state = _state(host, now, threshold_days)
    return text if state == policy.STATE_VALID else f"{text} {state}"


def _state(host: VirtualHost, now: datetime.datetime, threshold_days: int) -> str | None:
    return policy.certificate_state(now, threshold_days, host.cert_not_before, host.cert_not_after)


DAY = datetime.timedelta(days=1)
# The colour of each certificate state (Django's terminal styles; none when not a terminal).
STATE_STYLES = {
    policy.STATE_VALID: "SUCCESS",
    policy.STATE_DUE: "SUCCESS",  # its renewal is planned: nothing to do
    policy.STATE_OVERDUE: "WARNING",
    policy.STATE_EXPIRING: "ERROR",
    policy.STATE_EXPIRED: "ERROR",
}


def _next(host: VirtualHost) -> str:
    action = presenters.next_action(host)
    if action is None:
        return EMPTY
    return f"{action} {_when(host.next_attempt_at)}"


def _oneline(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(
    headers: list[str],
    rows: list[list[str]],
    paint: list[Callable[[str], str] | None] | None = None,
) -> str:
    """Aligned columns; ``paint[i]`` colours the "EXPIRES IN" cell of row ``i``."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [headers, ["-" * w for w in widths], *rows]
    styles: list[Callable[[str], str] | None] = [None, None, *(paint or [None] * len(rows))]
    out = []
    for line, style in zip(lines, styles, strict=True):
        cells = [str(c).ljust(w) for c, w in zip(line, widths, strict=True)]
        if style is not None:  # the text only: the padding stays outside the colour codes
            text = str(line[EXPIRES_COLUMN])
            cells[EXPIRES_COLUMN] = style(text) + cells[EXPIRES_COLUMN][len(text) :]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


class UsageParser(CommandParser):
    """Usage errors as one line and exit code 2, from the shell and from call_command."""

    def error(self, message: str) -> NoReturn:
        if self.called_from_command_line:
            self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")
        raise CommandError(f"Error: {message}", returncode=EXIT_USAGE)


def _usage(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_USAGE)


class Command(BaseCommand):
    help = (
        "Show and act on virtual hosts and their certificates. Exit codes: 0 all fine, "
        "1 command failed, 2 bad usage, 3 a host is failed or paused, 4 a certificate is "
        "overdue/expired, 5 the renewal scan is not running."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # The same parser, with UsageParser's one-line errors ("invalid choice: 'lsit'").
        parser.__class__ = UsageParser
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="action", required=True, metavar="ACTION", parser_class=UsageParser
        )
        cli = {"called_from_command_line": getattr(parser, "called_from_command_line", None)}

        p = sub.add_parser("list", help="One line per host.", **cli)
        p.add_argument("--json", action="store_true", help="Machine-readable output.")
        p.add_argument("--status", choices=[s for s, _ in constants.STATUSES])

        p = sub.add_parser("show", help="Everything about one host, with its history.", **cli)
        p.add_argument("hostname")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("retry", help="Retry provisioning of a host.", **cli)
        p.add_argument("hostname")

        p = sub.add_parser("renew", help="Renew a host's certificate now.", **cli)
        p.add_argument("hostname")

        p = sub.add_parser(
            "scan", help="Run the renewal scan now (--dry-run: only say what it would do).", **cli
        )
        p.add_argument("--dry-run", action="store_true", help="Enqueue nothing.")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("add", help="Create a host (provisioning starts).", **cli)
        p.add_argument("hostname")
        p.add_argument("--domain", help="Name of the Modoboa domain the host belongs to.")
        p.add_argument("--disabled", action="store_true", help="Create it disabled.")
        p.add_argument(
            "--profile",
            default="",
            help="ACME profile its orders require (e.g. tlsserver); default: ACME_PROFILE.",
        )

        p.add_argument(
            "--mail",
            action="store_true",
            help="It serves mail: its certificate also goes to Postfix and Dovecot by SNI.",
        )

        p = sub.add_parser(
            "mail", help="Say whether a host serves mail (Postfix and Dovecot).", **cli
        )
        p.add_argument("hostname")
        p.add_argument("serves_mail", choices=["on", "off"])

        p = sub.add_parser(
            "add-domain-names",
            help="Create a domain's usual names: mail., autoconfig. and autodiscover.<domain>.",
            **cli,
        )
        p.add_argument("domain", help="Name of the Modoboa domain.")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("remove", help="Delete a host (site removed, files archived).", **cli)
        p.add_argument("hostname")

        p = sub.add_parser(
            "tlsa",
            help="A mail host's TLSA records (current and next key), ready for a zone file.",
            **cli,
        )
        p.add_argument("hostname")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser(
            "rotate-key",
            help="Renew a mail host's certificate now with its next key (TLSA published or not).",
            **cli,
        )
        p.add_argument("hostname")

        p = sub.add_parser(
            "metrics",
            help="Print the Prometheus metrics, or write them (--output) for node_exporter's "
            "textfile collector.",
            **cli,
        )
        p.add_argument(
            "--output",
            metavar="FILE",
            help="Replace FILE atomically (e.g. /var/lib/prometheus/node-exporter/modoboa.prom).",
        )

        for name, text in (("enable", "Enable a host."), ("disable", "Disable a host.")):
            p = sub.add_parser(name, help=text, **cli)
            p.add_argument("hostname")

    def handle(self, *args: Any, **options: Any) -> None:
        self.now = timezone.now()
        self.threshold = int(conf.param("certificate_renewal_threshold"))
        action = options["action"]
        try:
            getattr(self, f"do_{action.replace('-', '_')}")(options)
        except RunInProgress as err:
            raise CommandError(f"{err.message} Try again once it has finished.") from err
        except VirtualHostError as err:
            raise CommandError(err.message) from err

    # -- helpers ----------------------------------------------------------------

    def _host(self, hostname: str) -> VirtualHost:
        try:
            return services.find_virtualhost(hostname)
        except InvalidHostname as err:
            raise _usage(err.message) from err
        except VirtualHost.DoesNotExist as err:
            raise CommandError(
                f"No virtual host named {hostname}; `virtualhosts list` shows them all."
            ) from err

    def _domain(self, name: str, option: str = "--domain") -> Any:
        """The Modoboa domain named ``name`` (as stored, or normalised like a hostname)."""
        from modoboa.admin.models import Domain

        domain = Domain.objects.filter(name=name).first()
        if domain is not None:
            return domain
        try:
            normalized = normalize_hostname(name)
        except InvalidHostname as err:
            raise _usage(f"{option}: {err.message}") from err
        domain = Domain.objects.filter(name=normalized).first()
        if domain is None:
            raise CommandError(f"No Modoboa domain named {normalized}.")
        return domain

    def _json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, cls=DjangoJSONEncoder, indent=2))

    def _finish(self, hosts: list[VirtualHost], *, check_scan: bool = False) -> None:
        """Exit with the worst state among ``hosts``, naming what needs attention."""
        code = exit_code(hosts, self.threshold, self.now)
        stale = alarms.staleness(self.now) if check_scan else None
        if stale is not None and code != EXIT_OVERDUE:
            # Nothing is overdue yet, but nothing will be renewed either: say it loudly.
            raise CommandError(stale, returncode=EXIT_SCAN_STALE)
        if code == EXIT_OK:
            return
        names = [
            f"{h.hostname} ({'; '.join(p)})"
            for h in hosts
            if (p := presenters.problems(h, self.threshold, self.now))
        ]
        raise CommandError(
            f"{len(names)} host(s) need attention: " + ", ".join(names), returncode=code
        )

    # -- subcommands ------------------------------------------------------------

    def do_list(self, options: dict[str, Any]) -> None:
        hosts = list(VirtualHost.objects.select_related("domain").order_by("hostname"))
        if options.get("status"):
            hosts = [h for h in hosts if h.status == options["status"]]
        if options["json"]:
            self._json([presenters.summary(h, self.threshold, self.now) for h in hosts])
        elif not hosts:
            self.stdout.write("No virtual hosts.")
        else:
            headers = ["HOSTNAME", "STATUS", "EXPIRES IN", "ISSUER", "NEXT", "LAST ERROR"]
            assert headers[EXPIRES_COLUMN] == "EXPIRES IN"
            rows = [
                [
                    h.hostname + (MAIL_MARK if h.serves_mail else ""),
                    h.status
                    + ("" if h.enabled or h.status == constants.STATUS_DISABLED else " (disabled)"),
                    _expires_in(h, self.now, self.threshold),
                    h.cert_issuer or EMPTY,
                    _next(h),
                    _oneline(h.last_error) if h.last_error else EMPTY,
                ]
                for h in hosts
            ]
            paint = [self._paint(h) for h in hosts]
            self.stdout.write(_table(headers, rows, paint))
            self.stdout.write(self._scan_line())
        self._finish(hosts, check_scan=True)

    def _paint(self, host: VirtualHost) -> Callable[[str], str] | None:
        state = _state(host, self.now, self.threshold) if host.enabled else None
        return getattr(self.style, STATE_STYLES[state]) if state else None

    def _scan_line(self) -> str:
        latest = alarms.last_scan()
        if latest is None or latest.finished_at is None:
            return "\nRenewal scan: has not run yet."
        return f"\nRenewal scan: last run {latest.finished_at:%Y-%m-%d %H:%M} UTC: {latest.summary}"

    def do_show(self, options: dict[str, Any]) -> None:
        host = self._host(options["hostname"])
        data = presenters.summary(host, self.threshold, self.now, with_history=True)
        if options["json"]:
            self._json(data)
        else:
            self._show(host, data)
        self._finish([host])

    def _show(self, host: VirtualHost, data: dict[str, Any]) -> None:
        cert = data["certificate"]
        lines = [
            ("Hostname", host.hostname),
            ("Enabled", "yes" if host.enabled else "no"),
            ("Serves mail", "yes (Postfix and Dovecot, by SNI)" if host.serves_mail else "no"),
            ("Domain", data["domain"] or EMPTY),
            ("Status", host.status),
            ("Last error", host.last_error or EMPTY),
            ("Failed step", host.failed_step or EMPTY),
            ("Failed attempts", str(host.attempts)),
            ("Failing since", _when(host.failing_since)),
            ("Certificate", "none yet" if cert is None else f"serial {cert['serial']}"),
        ]
        if host.site != constants.SITE_WEB:  # web hosts' output unchanged
            lines.insert(3, ("Site", f"{host.site} (the mail clients' paths only)"))
        if cert is not None:
            lines += [
                ("  Issuer", cert["issuer"]),
                ("  Valid from", _when(cert["not_before"])),
                (
                    "  Valid until",
                    f"{_when(cert['not_after'])} ({_expires_in(host, self.now, self.threshold)})",
                ),
                ("  Renewal due", _when(data["renewal_due_at"])),
                ("  Decided by", _renewal_source(data)),
            ]
        lines += [
            ("Next run", _next(host)),
            ("Last success", _when(host.last_success_at)),
        ]
        for label, value in lines:
            self.stdout.write(f"{label + ':':<17}{value}")
        self.stdout.write("")
        self.stdout.write("History (newest first):")
        if not data["history"]:
            self.stdout.write("  (no runs yet)")
        for event in data["history"]:
            self.stdout.write(
                f"  {_when(event['started_at'])}  {event['step']:<10} {event['outcome']:<7} "
                f"{event['duration']:6.2f}s  {_oneline(event['message'], 90)}"
            )

    def do_retry(self, options: dict[str, Any]) -> None:
        host = services.retry_provisioning(self._host(options["hostname"]))
        self.stdout.write(
            f"Provisioning of {host.hostname} queued on the {constants.QUEUE_DEFAULT!r} queue; "
            f"follow it with `virtualhosts show {host.hostname}`."
        )

    def do_renew(self, options: dict[str, Any]) -> None:
        host = services.renew_now(self._host(options["hostname"]))
        self.stdout.write(
            f"Renewal of {host.hostname} queued on the {constants.QUEUE_DEFAULT!r} queue; "
            f"follow it with `virtualhosts show {host.hostname}`."
        )

    def do_scan(self, options: dict[str, Any]) -> None:
        if not options["dry_run"]:
            self._run_scan(options)
            return
        # The scan's own decisions, taken without writing or enqueueing anything.
        report = scan.run(
            Path(str(conf.param("acme_account_storage_path"))),
            self.threshold,
            None,
            now=self.now,
            dry_run=True,
            spread=conf.renewal_spread(),
        )
        verdicts = report.verdicts
        if options["json"]:
            self._json([v.as_dict() for v in verdicts])
            return
        rows = [
            [v.hostname, "would renew" if v.renews else "skip", _oneline(v.reason, 100)]
            for v in verdicts
        ]
        if rows:
            self.stdout.write(_table(["HOSTNAME", "ACTION", "WHY"], rows))
        self.stdout.write(
            f"{report.due} of {len(verdicts)} host(s) due for renewal "
            f"(a third of a certificate's lifetime left, half under 10 days, or the "
            f"{self.threshold}-day threshold if earlier, capped at half; spread over "
            f"{policy.format_duration(conf.renewal_spread())}); "
            "nothing enqueued (dry run)."
        )

    def _run_scan(self, options: dict[str, Any]) -> None:
        """The real scan, exactly as cron runs it (jobs.check_certificate_renewals)."""
        from ... import jobs

        result = jobs.check_certificate_renewals()
        if options["json"]:
            self._json(result)
        else:
            self.stdout.write(f"Renewal scan: {result['summary']}")
        if result["not_queued"]:
            raise CommandError(
                f"Renewal scan interrupted: {len(result['not_queued'])} due renewal(s) not "
                "queued, Redis is unreachable. Start Redis, then run `virtualhosts scan` again.",
                returncode=EXIT_ERROR,
            )

    def do_add(self, options: dict[str, Any]) -> None:
        try:
            hostname = normalize_hostname(options["hostname"])
        except InvalidHostname as err:
            raise _usage(err.message) from err
        domain = None if options.get("domain") is None else self._domain(options["domain"])
        profile = options.get("profile") or ""
        try:
            validate_acme_profile(profile)
        except DjangoValidationError as err:
            raise _usage(" ".join(err.messages)) from err
        host = services.create_virtualhost(
            hostname,
            enabled=not options["disabled"],
            domain=domain,
            acme_profile=profile,
            serves_mail=options["mail"],
        )
        self.stdout.write(
            f"Created {host.hostname}"
            + (" (serves mail)" if host.serves_mail else "")
            + (" (disabled)." if not host.enabled else "; provisioning queued.")
        )

    def do_add_domain_names(self, options: dict[str, Any]) -> None:
        """One line per name; exit 1 when a name was refused (the others are created)."""
        domain = self._domain(options["domain"], option="DOMAIN")
        outcomes = services.create_domain_names(domain)
        if options.get("json"):
            self._json(
                [
                    {
                        "hostname": o.hostname,
                        "site": o.site,
                        "serves_mail": o.serves_mail,
                        "outcome": o.outcome,
                        "message": o.message,
                    }
                    for o in outcomes
                ]
            )
        else:
            rows = [[o.hostname, o.site, o.outcome, _oneline(o.message, 90)] for o in outcomes]
            self.stdout.write(_table(["HOSTNAME", "SITE", "OUTCOME", "MESSAGE"], rows))
        refused = [o.hostname for o in outcomes if o.outcome == domain_names.REFUSED]
        if refused:
            raise CommandError(
                f"{domain_names.summary(outcomes)}: " + ", ".join(refused), returncode=EXIT_ERROR
            )

    def do_remove(self, options: dict[str, Any]) -> None:
        host = self._host(options["hostname"])
        services.delete_virtualhost(host)
        self.stdout.write(f"Deleted {host.hostname}; its site is removed and its files archived.")

    def do_metrics(self, options: dict[str, Any]) -> None:
        body = metrics.text()
        if not options.get("output"):
            self.stdout.write(body.decode(), ending="")
            return
        path = Path(options["output"])
        # Atomic: the textfile collector never reads half a file (a temp file then rename).
        files.atomic_write(path, body, constants.PUBLIC_FILE_MODE)

    def do_mail(self, options: dict[str, Any]) -> None:
        on = options["serves_mail"] == "on"
        host = services.set_serves_mail(self._host(options["hostname"]), on)
        if on:
            what = "serves mail: its certificate goes to Postfix and Dovecot"
        else:
            what = "no longer serves mail: it leaves Postfix's and Dovecot's files"
        self.stdout.write(
            f"{host.hostname} {what}"
            + ("; its run is queued." if host.enabled else " once enabled.")
        )

    def do_enable(self, options: dict[str, Any]) -> None:
        host = services.set_enabled(self._host(options["hostname"]), True)
        self.stdout.write(f"Enabled {host.hostname}.")

    def do_disable(self, options: dict[str, Any]) -> None:
        host = services.set_enabled(self._host(options["hostname"]), False)
        self.stdout.write(f"Disabled {host.hostname}.")

    def do_tlsa(self, options: dict[str, Any]) -> None:
        host = self._host(options["hostname"])
        report = dane.report(
            host, conf.tlsa_ports(), conf.get("VIRTUALHOSTS_PREFLIGHT_RESOLVER") or None
        )
        if options["json"]:
            self._json(report.as_dict())
            return
        self.stdout.write("\n".join(_zone_lines(host, report)))

    def do_rotate_key(self, options: dict[str, Any]) -> None:
        host = services.rotate_key(self._host(options["hostname"]))
        self.stdout.write(
            f"Renewal of {host.hostname} with its next key queued on the "
            f"{constants.QUEUE_DEFAULT!r} queue: DANE senders refuse the new key until its "
            f"TLSA record is published (`virtualhosts tlsa {host.hostname}`). Follow it with "
            f"`virtualhosts show {host.hostname}`."
        )


_PUBLISHED = {True: "published", False: "NOT published yet", None: "unknown (DNS failed)"}


def _zone_lines(host: VirtualHost, report: dane.Report) -> list[str]:
    """The records as zone-file lines, each after a comment saying its role and state."""
    lines = [f"; TLSA records of {host.hostname}: publish the current AND the next key"]
    if not host.serves_mail:
        lines.append("; not a mail host: its key changes with every certificate")
    if not report.rows:
        lines.append(f"; {report.summary()}")
    for row in report.rows:
        lines.append(f"; {row.role} key, {_PUBLISHED[row.published]}")
        lines.append(row.zone_line)
    if report.rotation_requested:
        lines.append("; the next key is forced in at the renewal under way (rotate-key)")
    if report.problem:
        lines.append(f"; {report.problem}")
    lines += [f"; WARNING: {warning}" for warning in report.warnings]
    return lines


def _renewal_source(data: dict[str, Any]) -> str:
    """Which rule set the renewal time: the CA's ARI window (with its link) or the lifetime."""
    if data["renewal_source"] == "ari":
        link = data["renewal_explanation_url"]
        return "the CA's renewal window (ARI)" + (f", see {link}" if link else "")
    return "the certificate's lifetime and the renewal threshold"

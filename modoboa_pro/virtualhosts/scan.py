"""The renewal scan: read each host's certificate from disk, decide, fan out due renewals.

The usual host (its pair unchanged since it passed every check, its row's facts those of
its leaf, not due as planned) is settled from its row, neither file opened (``_Unchanged``);
every other host is read and decided in full.

Selection only: each renewal runs as its own job (``queueing.RENEW``). The
dry run (``run(..., dry_run=True)``) takes the same decisions and writes and
enqueues nothing, so ``virtualhosts scan --dry-run`` says what the scan does.

Redis restarted during the scan loses (without persistence) the renewals queued
before: the scan notices (``queueing.server_epoch`` changed) and queues them again.
Renewals it could not queue while Redis was down are queued at the end if Redis is
back; otherwise the scan records them as not queued, for the next scan.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import operator
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.db import connections
from django.db.models.sql.constants import MULTI
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import alarms, constants, policy, queueing, recording, renewal_info
from .adapters import pair_reader, storage
from .adapters.x509 import CertificateFacts
from .errors import QueueUnavailable, VirtualHostError
from .models import OBSERVED_FIELDS, RenewalScan, VirtualHost

logger = logging.getLogger("modoboa.jobs")

# Scan records kept: three months of daily runs, for the status output.
SCANS_KEEP = 90
# Hosts read per round trip while streaming; the scan holds one chunk at a time.
CHUNK_SIZE = 500

SKIP_DISABLED = "disabled"
SKIP_PAUSED = "paused"
SKIP_LETSENCRYPT_OFF = "letsencrypt_disabled"
NO_CERT_PROVISIONING = "provisioning"
NO_CERT_STUCK = "stuck"
NO_CERT_FAILED = "failed"
NO_CERT_HTTP_ONLY = "http_only"

# What the scan reads of each host: identity, desired state, everything observed, and the
# stamp of the pair files that last passed every check.
_FIELDS = ("id", "hostname", "domain_id", "enabled", *OBSERVED_FIELDS, "pair_stamp")
# What the shortcut for unchanged hosts (``_Unchanged``) reads of a row, in this order.
_SHORTCUT_FIELDS = (
    "hostname",
    "enabled",
    "status",
    "attempts",
    "pair_stamp",
    "cert_serial",
    "cert_not_before",
    "cert_not_after",
    "next_attempt_at",
    "ari_cert_id",
    "ari_renew_at",
    "ari_recheck_at",
)


def _row_fields() -> tuple[str, ...]:
    """``_FIELDS`` in the model's order: ``VirtualHost.from_db`` takes a row's values in it."""
    return tuple(f.attname for f in VirtualHost._meta.concrete_fields if f.attname in _FIELDS)


@dataclass(frozen=True)
class Verdict:
    """What the scan does with one host, and why (one row of the dry run)."""

    hostname: str
    host_id: int
    action: str  # a policy action (RENEW, SKIP_NOT_DUE...) or SKIP_DISABLED
    reason: str
    not_after: datetime.datetime | None = None
    due_at: datetime.datetime | None = None
    renewal_source: str = policy.SOURCE_LIFETIME  # what set ``due_at``: "ari" or "lifetime"
    planned_at: datetime.datetime | None = None

    @property
    def renews(self) -> bool:
        return self.action == policy.RENEW

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"] = "renew" if self.renews else "skip"
        return data


def verdict(
    host: VirtualHost,
    stored: storage.StoredCertificate,
    threshold_days: int,
    now: datetime.datetime,
    spread: datetime.timedelta = datetime.timedelta(0),
) -> Verdict:
    """The renewal decision for one host and the certificate read from its files."""
    if not host.enabled:
        return Verdict(
            host.hostname, host.pk, SKIP_DISABLED, "disabled: its challenge cannot be served"
        )
    if host.status == constants.STATUS_PAUSED:
        return Verdict(
            host.hostname,
            host.pk,
            SKIP_PAUSED,
            "paused (see its last error): Retry provisioning or Renew now once fixed",
            not_after=stored.facts.not_after if stored.facts else host.cert_not_after,
        )
    decision = policy.decide_stored(
        now,
        threshold_days,
        host.hostname,
        stored,
        attempts=host.attempts,
        next_attempt_at=host.next_attempt_at,
        ari=recording.stored_ari(host),
        spread=spread,
    )
    reason = decision.reason
    if decision.action == policy.NO_CERTIFICATE:
        reason += ": provisioning handles it"
    return Verdict(
        host.hostname,
        host.pk,
        decision.action,
        reason,
        not_after=stored.facts.not_after if stored.facts else None,
        due_at=decision.due_at,
        renewal_source=decision.source,
        planned_at=decision.planned_at,
    )


@dataclass
class ScanReport:
    """What one scan saw and did; ``summary()`` is its log line."""

    started_at: datetime.datetime
    seen: int = 0
    due: int = 0
    disabled: int = 0
    enqueued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    without_certificate: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)  # no longer retried until an operator does
    expired: list[str] = field(default_factory=list)
    urgent: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # One per host, kept only when asked (the dry run's listing): the scan's memory stays
    # the same whatever the number of hosts.
    verdicts: list[Verdict] = field(default_factory=list)
    keep_verdicts: bool = field(default=False, repr=False)
    # Pairs whose content was checked, and pairs whose files were unchanged since they
    # passed every check (the content checks skipped; see ``adapters.pair_reader``).
    pairs_checked: int = 0
    pairs_unchanged: int = 0
    # Of those unchanged, the hosts counted as not due from their row alone (``_Unchanged``).
    settled_from_rows: int = 0
    # Due, but Redis could not be reached to queue their renewal.
    not_queued: list[str] = field(default_factory=list)
    # Queued, lost when Redis restarted during the scan, and queued again.
    requeued: list[str] = field(default_factory=list)
    # Every due host handed to ``enqueue``: what a Redis restart may have lost.
    scheduled: list[VirtualHost] = field(default_factory=list, repr=False)

    def add(self, found: Verdict) -> None:
        if self.keep_verdicts:
            self.verdicts.append(found)

    def summary(self) -> str:
        no_cert = sum(len(v) for v in self.without_certificate.values())
        parts = [
            f"{self.seen} enabled host(s) seen",
            f"{self.due} due",
            f"{len(self.enqueued)} renewal(s) enqueued",
        ]
        skipped = [
            f"{len(self.already_queued)} already queued or running",
            f"{self.skipped[policy.SKIP_BACKOFF]} waiting for their retry time",
            f"{self.skipped[policy.SKIP_NOT_DUE]} not due",
            f"{self.disabled} disabled",
            f"{no_cert} without a certificate{self._no_cert_detail()}",
        ]
        if self.paused:
            skipped.append(f"{len(self.paused)} paused ({_names(self.paused)})")
        if self.skipped[SKIP_LETSENCRYPT_OFF]:
            skipped.insert(0, f"{self.skipped[SKIP_LETSENCRYPT_OFF]} due (Let's Encrypt disabled)")
        line = ", ".join(parts) + "; skipped: " + ", ".join(skipped)
        line += f"; {len(self.unreadable)} unreadable certificate file(s)"
        if self.unreadable:
            line += f" ({_names(self.unreadable)})"
        if self.expired:
            line += f"; {len(self.expired)} expired ({_names(self.expired)})"
        if self.urgent:
            line += (
                f"; {len(self.urgent)} close to expiry with failing renewals "
                f"({_names(self.urgent)})"
            )
        if self.errors:
            line += f"; {len(self.errors)} error(s) ({_names(self.errors)})"
        if self.requeued:
            line += (
                f"; Redis restarted during the scan: {len(self.requeued)} renewal(s) queued "
                f"before were lost with it and queued again ({_names(self.requeued)})"
            )
        if self.not_queued:
            line += (
                f"; interrupted: Redis unreachable, {len(self.not_queued)} due renewal(s) not "
                f"queued ({_names(self.not_queued)}): the next scan queues them, or run "
                "`virtualhosts scan` once Redis is back"
            )
        return line

    def _no_cert_detail(self) -> str:
        details = [
            f"{len(names)} {kind}: {_names(names)}"
            for kind, names in sorted(self.without_certificate.items())
            if kind in (NO_CERT_FAILED, NO_CERT_STUCK) and names
        ]
        return f" ({'; '.join(details)})" if details else ""


class _AriAsker:
    """The scan's questions to the CA about renewal windows: at most one per host, only for
    hosts whose re-ask time has passed, none at all once the CA proved unreachable."""

    def __init__(self, make_ca: Callable[[], renewal_info.RenewalInfoSource] | None) -> None:
        self._make_ca = make_ca
        self._ca: renewal_info.RenewalInfoSource | None = None
        self.asked = 0

    @property
    def asking(self) -> bool:
        """Whether the CA may still be asked (not a dry run, not found unreachable)."""
        return self._make_ca is not None

    def maybe_ask(
        self,
        host: VirtualHost,
        facts: CertificateFacts,
        now: datetime.datetime,
        threshold_days: int,
    ) -> None:
        if self._make_ca is None or not renewal_info.needs_asking(host, facts, now):
            return
        try:
            if self._ca is None:
                self._ca = self._make_ca()  # the directory is fetched once, on first need
            self.asked += 1
            renewal_info.ask(host, self._ca, facts, now=now, threshold_days=threshold_days)
        except VirtualHostError as err:  # unreachable, or not configured: ask no more
            logger.warning(
                "certificate renewal scan: no renewal information asked from the CA after "
                "%s: %s; the stored times and the lifetime rule decide",
                host.hostname,
                err.message,
            )
            self._make_ca = None


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run(
    storage_root: Path,
    threshold_days: int,
    enqueue: Callable[[VirtualHost], bool] | None,
    *,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
    ari_source: Callable[[], renewal_info.RenewalInfoSource] | None = None,
    spread: datetime.timedelta = datetime.timedelta(0),
    list_verdicts: bool | None = None,
) -> ScanReport:
    """Scan every host; ``enqueue(host)`` returns False when a renewal is already pending.

    ``ari_source`` builds the CA client asked for renewal windows (ARI) of hosts whose
    re-ask time has passed, before their decision; the dry run never asks.

    ``enqueue=None`` (Let's Encrypt disabled) reports due hosts without renewing
    them. ``dry_run`` decides the same way and writes and enqueues nothing.
    ``list_verdicts`` (the dry run's default) keeps every host's ``Verdict`` in
    ``report.verdicts``; otherwise only the counts and the names of the hosts that
    need attention are kept.

    A constant number of SQL queries whatever the number of hosts (hosts are
    streamed), plus one UPDATE per host whose recorded state changes, and one per
    ``CHUNK_SIZE`` hosts whose pair files changed since the previous scan.
    """
    now = now or timezone.now()
    report = ScanReport(
        started_at=now, keep_verdicts=dry_run if list_verdicts is None else list_verdicts
    )
    epoch = queueing.server_epoch() if enqueue is not None and not dry_run else None
    asker = _AriAsker(None if dry_run else ari_source)
    stamps = _StampBook(dry_run)
    fields = _row_fields()
    rows = _Rows(fields)
    with pair_reader.PairReader(storage_root) as reader:
        # Its hosts are only counted: not when every verdict is listed or logged.
        shortcut = (
            None
            if report.keep_verdicts or logger.isEnabledFor(logging.DEBUG)
            else _Unchanged(reader, fields, now, threshold_days, spread, asker, rows.timezone)
        )
        for row in rows:
            if shortcut is not None and shortcut(row):
                continue
            host = VirtualHost.from_db(rows.db, fields, rows.converted(row))
            try:
                _scan_host(
                    host, reader, threshold_days, enqueue, now, report, dry_run, asker, spread,
                    stamps,
                )  # fmt: skip
            except VirtualHostError as err:  # e.g. Redis unreachable: report, go on
                report.errors.append(host.hostname)
                logger.error("virtualhost %s: renewal scan failed: %s", host.hostname, err.message)
        stamps.flush()
        report.pairs_checked, report.pairs_unchanged = reader.full_checks, reader.skipped_checks
    if shortcut is not None:
        report.settled_from_rows = shortcut.count
        report.seen += shortcut.count
        report.skipped[policy.SKIP_NOT_DUE] += shortcut.count
    if dry_run:
        return report
    if enqueue is not None:
        _catch_up(report, enqueue, epoch)
    summary = report.summary()
    logger.info("certificate renewal scan: %s", summary)
    if report.not_queued:
        logger.error("certificate renewal scan interrupted: %s", summary)
    RenewalScan.objects.create(
        started_at=now,
        finished_at=timezone.now(),
        hosts_seen=report.seen,
        due=report.due,
        enqueued=len(report.enqueued),
        unreadable=len(report.unreadable),
        not_queued=len(report.not_queued),
        summary=summary[:4000],
    )
    _prune_scans()
    alarms.refresh_staleness_alarm()
    return report


class _Rows:
    """Every host's row, in hostname order, ``CHUNK_SIZE`` rows a round trip, as the
    database driver returns them: Django's conversion of the values is left to the rows
    that need a model instance (``converted``). The usual host is settled from 12 of its
    23 values (``_Unchanged``); converting them all, 8 datetimes a row made aware on
    SQLite, was a quarter of a scan where nothing is due."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        query = VirtualHost.objects.order_by("hostname").values_list(*fields)
        self.db = query.db
        connection = connections[self.db]
        # The zone of naive datetimes the driver returns (UTC unless the database's own
        # TIME_ZONE setting says otherwise): what Django's converters assume too.
        self.timezone = connection.timezone
        self._compiler = query.query.get_compiler(using=self.db)
        self._chunks = self._compiler.execute_sql(
            MULTI,
            # As ``QuerySet.iterator`` does (the backend decides whether it can).
            chunked_fetch=not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"),
            chunk_size=CHUNK_SIZE,
        )
        selected = [column[0] for column in self._compiler.select[: self._compiler.col_count]]
        self._converters = self._compiler.get_converters(selected)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return itertools.chain.from_iterable(self._chunks)

    def converted(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The row as ``values_list`` would have returned it."""
        if not self._converters:
            return row
        return tuple(next(iter(self._compiler.apply_converters([row], self._converters))))


def _aware(value: Any, zone: datetime.tzinfo) -> Any:
    """A datetime from the driver as Django's converters make it: aware, naive ones in the
    connection's zone (None stays None)."""
    if type(value) is datetime.datetime and value.tzinfo is None:  # SQLite's, every row
        return value.replace(tzinfo=zone)
    if isinstance(value, str):  # a driver that leaves them as text
        value = parse_datetime(value)
        return value if value is None or value.tzinfo else value.replace(tzinfo=zone)
    return value  # None, or aware already (PostgreSQL)


class _Unchanged:
    """The scan's shortcut for the usual host: enabled, not paused, no failed attempt, its
    pair files unchanged since they passed every check and their leaf's facts the ones
    recorded on its row (``PairReader.unchanged``: neither file opened nor parsed), nothing
    to ask the CA, not due and its planned time as recorded (``policy.not_due_as_planned``).
    What the full path would do for it is count it as not due: it is counted (``count``).
    Any other host (False) takes the full path."""

    def __init__(
        self,
        reader: pair_reader.PairReader,
        fields: tuple[str, ...],
        now: datetime.datetime,
        threshold_days: int,
        spread: datetime.timedelta,
        asker: _AriAsker,
        zone: datetime.tzinfo,
    ) -> None:
        self._reader = reader
        self._zone = zone
        self._values = operator.itemgetter(*(fields.index(name) for name in _SHORTCUT_FIELDS))
        self._now = now
        self._threshold_days = threshold_days
        self._spread = spread
        self._asker = asker
        self.count = 0

    def __call__(self, row: tuple[Any, ...]) -> bool:
        (
            hostname,
            enabled,
            status,
            attempts,
            stamp,
            serial,
            not_before,
            not_after,
            planned_at,
            ari_id,
            ari_renew_at,
            recheck_at,
        ) = self._values(row)
        if not enabled or status == constants.STATUS_PAUSED or attempts or not stamp:
            return False
        if not_before is None or not_after is None:
            return False
        zone = self._zone
        # The leaf's ARI id, as far as the decision goes: whether it has one, and whether the
        # CA's stored answer is about it (digests compare as the ids would).
        leaf_ari, asked_about = pair_reader.stamped_ari(stamp), pair_reader.ari_digest(ari_id)
        same_ari = leaf_ari == asked_about
        if self._asker.asking and renewal_info.asking_due(
            leaf_ari, asked_about, _aware(recheck_at, zone), self._now
        ):
            return False
        not_before, not_after = _aware(not_before, zone), _aware(not_after, zone)
        if not policy.not_due_as_planned(
            self._now,
            self._threshold_days,
            hostname,
            serial,
            not_before,
            not_after,
            planned_at=_aware(planned_at, zone),
            spread=self._spread,
            ari_renew_at=_aware(ari_renew_at, zone) if ari_id and same_ari else None,
        ):
            return False
        if not self._reader.unchanged(hostname, stamp, (serial, not_before, not_after)):
            return False
        self.count += 1
        return True


class _StampBook:
    """The pair stamps to record, written ``CHUNK_SIZE`` hosts at a time (one UPDATE each):
    none on a day when no pair changed, and never a list as long as the hosts."""

    def __init__(self, dry_run: bool) -> None:
        self._dry_run = dry_run
        self._pending: list[VirtualHost] = []

    def note(self, host: VirtualHost, stamp: str) -> None:
        if self._dry_run or stamp == host.pair_stamp:
            return
        host.pair_stamp = stamp
        self._pending.append(host)
        if len(self._pending) >= CHUNK_SIZE:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            # Only this column: what a renewal records meanwhile is left alone. A stamp
            # older than the files makes the next scan check them in full, nothing worse.
            VirtualHost.objects.bulk_update(self._pending, ["pair_stamp"], batch_size=CHUNK_SIZE)
            self._pending = []


def _scan_host(
    host: VirtualHost,
    reader: pair_reader.PairReader,
    threshold_days: int,
    enqueue: Callable[[VirtualHost], bool] | None,
    now: datetime.datetime,
    report: ScanReport,
    dry_run: bool,
    asker: _AriAsker,
    spread: datetime.timedelta,
    stamps: _StampBook,
) -> None:
    if not host.enabled:
        report.disabled += 1
        report.add(verdict(host, storage.StoredCertificate(None), threshold_days, now))
        return
    report.seen += 1
    if host.status == constants.STATUS_PAUSED:
        # Failing for days: no order, no file repair, no alarm change until an operator retries.
        report.paused.append(host.hostname)
        report.add(verdict(host, storage.StoredCertificate(None), threshold_days, now))
        return
    # A key others can read is made private at once (not in a dry run), then replaced.
    stored = reader.read(
        host.hostname,
        issued_serial=host.cert_serial,
        repair=not dry_run,
        verified_stamp=host.pair_stamp,
    )
    stamps.note(host, stored.stamp)
    if stored.facts is not None and stored.problem is None:
        asker.maybe_ask(host, stored.facts, now, threshold_days)
    found = verdict(host, stored, threshold_days, now, spread)
    report.add(found)
    if stored.problem is not None:
        report.unreadable.append(host.hostname)
        logger.warning("virtualhost %s: %s", host.hostname, stored.problem)
        if not dry_run:
            recording.mark_unusable_file(host, stored.problem, now)
    elif stored.facts is None:
        kind = _without_certificate(host, now)
        report.without_certificate.setdefault(kind, []).append(host.hostname)
        return
    else:
        if not dry_run:
            recording.sync_facts(host, stored.facts, threshold_days, spread)
        facts = stored.facts
        if policy.is_urgent(now, facts.not_before, facts.not_after, host.attempts):
            report.urgent.append(host.hostname)
            if not dry_run:
                alarms.alarm_urgent(host, stored.facts.not_after, now)
        elif expired := policy.expired_problem(
            now,
            stored.facts.not_after,
            storage.certificate_paths(reader.storage_root, host.hostname)[0],
        ):
            # Expired with no failing renewal to blame (a pair restored from an old
            # backup, renewals not running): the host shows it until the renewal is done.
            report.expired.append(host.hostname)
            logger.warning("virtualhost %s: %s", host.hostname, expired)
            if not dry_run:
                recording.mark_unusable_file(host, f"{expired}. A renewal replaces it.", now)
    if found.renews:
        report.due += 1
        _schedule(host, enqueue, found.reason, report, dry_run)
    else:
        report.skipped[found.action] += 1
        logger.debug("virtualhost %s: %s", host.hostname, found.reason)


def _schedule(
    host: VirtualHost,
    enqueue: Callable[[VirtualHost], bool] | None,
    why: str,
    report: ScanReport,
    dry_run: bool,
) -> None:
    if dry_run:
        report.enqueued.append(host.hostname)  # would be
    elif enqueue is None:
        report.skipped[SKIP_LETSENCRYPT_OFF] += 1
        logger.warning("virtualhost %s: due (%s) but Let's Encrypt is disabled", host.hostname, why)
    else:
        report.scheduled.append(host)
        try:
            queued = enqueue(host)
        except QueueUnavailable as err:
            report.not_queued.append(host.hostname)
            logger.error("virtualhost %s: renewal due but not queued: %s", host.hostname, err)
            return
        if queued:
            report.enqueued.append(host.hostname)
            logger.info("virtualhost %s: renewal scheduled (%s)", host.hostname, why)
        else:
            report.already_queued.append(host.hostname)
            logger.info("virtualhost %s: renewal already queued or running", host.hostname)


def _catch_up(
    report: ScanReport, enqueue: Callable[[VirtualHost], bool], epoch: str | None
) -> None:
    """Queue again what Redis lost during the scan, and what could not be queued while it
    was down. ``enqueue`` leaves a renewal still queued alone: nothing runs twice."""
    now_epoch = queueing.server_epoch()
    restarted = None not in (epoch, now_epoch) and epoch != now_epoch
    missing = set(report.not_queued)
    if now_epoch is None or not (restarted or missing):
        return  # unreachable still (not_queued says so), or nothing was lost
    if restarted:
        logger.warning("Redis restarted during the renewal scan: queueing its lost renewals")
    for host in report.scheduled:
        name = host.hostname
        if not (restarted or name in missing):
            continue
        try:
            queued = enqueue(host)
        except QueueUnavailable as err:
            logger.error("virtualhost %s: renewal still not queued: %s", name, err)
            break  # down again: what is left stays as recorded
        if name in missing:
            report.not_queued.remove(name)
            (report.enqueued if queued else report.already_queued).append(name)
        elif queued:
            report.requeued.append(name)
            if name in report.already_queued:  # queued by another scan, lost all the same
                report.already_queued.remove(name)
                report.enqueued.append(name)
        if queued:
            logger.info("virtualhost %s: renewal queued again after Redis came back", name)


def _without_certificate(host: VirtualHost, now: datetime.datetime) -> str:
    if host.status == constants.STATUS_FAILED:
        return NO_CERT_FAILED
    if host.status == constants.STATUS_HTTP_ONLY:
        return NO_CERT_HTTP_ONLY
    in_progress = host.status in (constants.STATUS_PENDING, constants.STATUS_PROVISIONING)
    if in_progress and now - host.updated_at < policy.PROVISIONING_STUCK_AFTER:
        return NO_CERT_PROVISIONING
    return NO_CERT_STUCK


def _prune_scans() -> None:
    stale = list(RenewalScan.objects.values_list("pk", flat=True)[SCANS_KEEP:])
    if stale:
        RenewalScan.objects.filter(pk__in=stale).delete()

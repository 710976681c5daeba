"""The Prometheus exposition of the certificates, hosts, renewal scan and workers.

Names follow cert-manager's (``certmanager_`` -> ``modoboa_``) so that dashboards and
alert rules carry over with a rename; docs/monitoring.md lists them with their labels.
``collect`` costs a constant number of SQL queries (one over all hosts, the last scan and
the scan's staleness) plus one Redis round trip per queue and one for the counters.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import django_rq
from django.conf import settings
from django.utils import timezone
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from redis.exceptions import RedisError

from . import alarms, conf, constants, policy
from .adapters import counters
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")

PREFIX = "modoboa_"
HOST_LABELS = ("hostname", "domain")
# cert-manager's ready condition: True (serving a valid certificate), False (failing,
# paused, or its certificate expired), Unknown (being provisioned, HTTP only, disabled).
CONDITIONS = ("True", "False", "Unknown")
QUEUES = (constants.QUEUE_DEFAULT, constants.QUEUE_PRIVILEGED)
SCAN_RESULTS = ("seen", "due", "enqueued", "unreadable", "not_queued")

_HOST_FIELDS = (
    "hostname",
    "domain__name",
    "status",
    "attempts",
    "failing_since",
    "cert_serial",
    "cert_not_before",
    "cert_not_after",
    "ari_renew_at",
)


@dataclass(frozen=True)
class HostRow:
    hostname: str
    domain: str
    status: str
    attempts: int
    failing_since: datetime.datetime | None
    serial: str
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    ari_renew_at: datetime.datetime | None


def _ts(value: datetime.datetime) -> float:
    return value.timestamp()


def ready_condition(row: HostRow, now: datetime.datetime) -> str:
    if row.status == constants.STATUS_ACTIVE and row.not_after is not None and row.not_after > now:
        return "True"
    if row.status in (constants.STATUS_FAILED, constants.STATUS_PAUSED):
        return "False"
    if row.not_after is not None and row.not_after <= now:
        return "False"
    return "Unknown"


def renewal_at(
    row: HostRow, threshold_days: int, spread: datetime.timedelta
) -> datetime.datetime | None:
    """When the certificate is to be renewed: the CA's ARI time, else the lifetime rule plus
    the host's share of the spread (what the scan and the retry sweep compute)."""
    if row.not_before is None or row.not_after is None:
        return None
    when, source = policy.planned_renewal(
        threshold_days, row.not_before, row.not_after, row.ari_renew_at
    )
    if source == policy.SOURCE_ARI:
        return when
    return policy.planned_renewal_at(
        threshold_days,
        row.not_before,
        row.not_after,
        spread=spread,
        share=policy.jitter(row.hostname, row.serial),
    )


def host_families(
    rows: Iterable[HostRow],
    now: datetime.datetime,
    threshold_days: int,
    spread: datetime.timedelta,
) -> list[Metric]:
    """The per-host series, labelled ``hostname`` and ``domain``."""
    labels = list(HOST_LABELS)
    expiration = GaugeMetricFamily(
        PREFIX + "certificate_expiration_timestamp_seconds",
        "The date after which the certificate expires (notAfter), as a Unix timestamp.",
        labels=labels,
    )
    not_before = GaugeMetricFamily(
        PREFIX + "certificate_not_before_timestamp_seconds",
        "The date from which the certificate is valid (notBefore), as a Unix timestamp.",
        labels=labels,
    )
    renewal = GaugeMetricFamily(
        PREFIX + "certificate_renewal_timestamp_seconds",
        "When the certificate's renewal is planned (the CA's ARI time, else the lifetime "
        "rule plus the spread), as a Unix timestamp.",
        labels=labels,
    )
    ready = GaugeMetricFamily(
        PREFIX + "certificate_ready_status",
        "The ready condition of the host's certificate (1 for its current condition).",
        labels=[*labels, "condition"],
    )
    status = GaugeMetricFamily(
        PREFIX + "virtualhost_status",
        "The virtual host's status (1 for its current status).",
        labels=[*labels, "status"],
    )
    failures = GaugeMetricFamily(
        PREFIX + "virtualhost_consecutive_failures",
        "Consecutive failed runs since the last success.",
        labels=labels,
    )
    failing_since = GaugeMetricFamily(
        PREFIX + "virtualhost_failing_since_timestamp_seconds",
        "When the current streak of failed runs began (only for failing hosts).",
        labels=labels,
    )
    for row in rows:
        key = [row.hostname, row.domain]
        if row.not_after is not None:
            expiration.add_metric(key, _ts(row.not_after))
        if row.not_before is not None:
            not_before.add_metric(key, _ts(row.not_before))
        planned = renewal_at(row, threshold_days, spread)
        if planned is not None:
            renewal.add_metric(key, _ts(planned))
        condition = ready_condition(row, now)
        for name in CONDITIONS:
            ready.add_metric([*key, name], 1.0 if name == condition else 0.0)
        for name, _label in constants.STATUSES:
            status.add_metric([*key, name], 1.0 if name == row.status else 0.0)
        failures.add_metric(key, float(row.attempts))
        if row.failing_since is not None and row.attempts:
            failing_since.add_metric(key, _ts(row.failing_since))
    return [expiration, not_before, renewal, ready, status, failures, failing_since]


def scan_families(now: datetime.datetime) -> list[Metric]:
    """The last renewal scan: when it finished, what it found; whether it is stale."""
    last_run = GaugeMetricFamily(
        PREFIX + "renewal_scan_last_run_timestamp_seconds",
        "When the last renewal scan finished (absent before the first one).",
    )
    hosts = GaugeMetricFamily(
        PREFIX + "renewal_scan_hosts",
        "What the last renewal scan found: hosts seen, due, enqueued, with an unreadable "
        "certificate, due but not queued (Redis unreachable).",
        labels=["result"],
    )
    stale = GaugeMetricFamily(
        PREFIX + "renewal_scan_stale",
        "1 when the renewal scan has not run for 26 hours while hosts have certificates.",
    )
    latest = alarms.last_scan()
    if latest is not None and latest.finished_at is not None:
        last_run.add_metric([], _ts(latest.finished_at))
        values = (latest.hosts_seen, latest.due, latest.enqueued, latest.unreadable)
        for name, value in zip(SCAN_RESULTS, (*values, latest.not_queued), strict=True):
            hosts.add_metric([name], float(value))
    stale.add_metric([], 0.0 if alarms.staleness(now) is None else 1.0)
    return [last_run, hosts, stale]


def counter_families(snapshot: counters.Snapshot) -> list[Metric]:
    """ACME requests and their duration, orders placed, reloads (Redis counters)."""
    acme_labels = ["host", "method", "action", "status"]
    requests = CounterMetricFamily(
        PREFIX + "http_acme_client_request_count",
        "Requests sent to the ACME server, by CA host, method, directory action and HTTP "
        "status (error: no answer).",
        labels=acme_labels,
    )
    duration = SummaryMetricFamily(
        PREFIX + "http_acme_client_request_duration_seconds",
        "Time taken by requests to the ACME server.",
        labels=acme_labels,
    )
    orders = CounterMetricFamily(
        PREFIX + "acme_orders",
        "New certificate orders the CA accepted, by CA host.",
        labels=["host"],
    )
    placed: dict[str, int] = {}
    for key, count in sorted(snapshot.acme_requests.items()):
        requests.add_metric(list(key), float(count))
        duration.add_metric(list(key), count, snapshot.acme_seconds.get(key, 0.0))
        host, _method, action, status = key
        if action == "newOrder" and status.startswith("2"):
            placed[host] = placed.get(host, 0) + count
    for host, count in sorted(placed.items()):
        orders.add_metric([host], float(count))
    reloads = CounterMetricFamily(
        PREFIX + "reloads",
        "Configuration reloads by service (nginx; postfix and dovecot once they deploy "
        "certificates) and outcome (ok, failed).",
        labels=["service", "outcome"],
    )
    for key, count in sorted(snapshot.reloads.items()):
        reloads.add_metric(list(key), float(count))
    return [requests, duration, orders, reloads]


def redis_families() -> list[Metric]:
    """Jobs queued per RQ queue and the Redis counters; ``redis_up`` 0 when unreachable."""
    up = GaugeMetricFamily(
        PREFIX + "redis_up", "1 when Redis (the job queues and counters) answered."
    )
    queued = GaugeMetricFamily(
        PREFIX + "jobs_queued", "Jobs waiting in each RQ queue.", labels=["queue"]
    )
    try:
        for name in QUEUES:
            if name in settings.RQ_QUEUES:  # a missing one is system check E001/E002's job
                queued.add_metric([name], float(django_rq.get_queue(name).count))
        snapshot = counters.read(django_rq.get_connection(constants.QUEUE_DEFAULT))
    except RedisError as err:
        logger.warning("metrics: Redis unreachable, queue and counter series left out: %s", err)
        up.add_metric([], 0.0)
        return [up]
    up.add_metric([], 1.0)
    return [up, queued, *counter_families(snapshot)]


def collect(now: datetime.datetime | None = None) -> list[Metric]:
    """Every family, read now."""
    now = now or timezone.now()
    rows = [
        HostRow(name, domain or "", status, attempts, since, serial, *dates)
        for name, domain, status, attempts, since, serial, *dates in VirtualHost.objects.order_by(
            "hostname"
        ).values_list(*_HOST_FIELDS)
    ]
    threshold = int(conf.param("certificate_renewal_threshold"))
    return [
        *host_families(rows, now, threshold, conf.renewal_spread()),
        *scan_families(now),
        *redis_families(),
    ]


class _Families:
    """A collector serving families already read (prometheus_client's Collector protocol)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The exposition in the format ``accept`` asks for (Prometheus text by default),
    and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(collect()))  # type: ignore[arg-type]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def text() -> bytes:
    """The Prometheus text format (node_exporter's textfile collector reads it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(collect()))  # type: ignore[arg-type]
    return generate_latest(registry)

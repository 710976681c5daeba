"""One measured step of scenario 4, in a process of its own (so its peak memory is its own).

``python -m bench.scan_child setup|scan|bare ...`` with ``DJANGO_SETTINGS_MODULE=tests.settings``
and ``MODOBOA_PRO_TEST_RUN_DIR`` set (SQLite database and Redis socket live there). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from bench.certfiles import THRESHOLD_DAYS


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _django() -> None:
    import django

    django.setup()


def setup(count: int, storage_root: Path) -> dict:
    """Migrate (first time), then add hosts up to ``count`` as the scan left them: active,
    their certificate's facts recorded, the CA's renewal information asked 'recently'."""
    _django()
    from django.core.management import call_command
    from django.utils import timezone

    from bench.certfiles import hostname
    from modoboa_pro.virtualhosts.adapters import storage
    from modoboa_pro.virtualhosts.models import VirtualHost

    call_command("migrate", verbosity=0, interactive=False)
    have = VirtualHost.objects.count()
    now = timezone.now()
    rows = []
    for i in range(have, count):
        name = hostname(i)
        facts = storage.read_current(storage_root, name).facts
        assert facts is not None, name
        rows.append(
            VirtualHost(
                hostname=name,
                status="active",
                cert_serial=facts.serial,
                cert_issuer=facts.issuer,
                cert_not_before=facts.not_before,
                cert_not_after=facts.not_after,
                last_success_at=now,
                ari_cert_id=facts.ari_id,
                ari_recheck_at=now + datetime.timedelta(days=10),
            )
        )
    VirtualHost.objects.bulk_create(rows, batch_size=500)
    # One scan first, untimed: whatever it records on first sight is not the daily cost.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        _scan(storage_root)
    return {
        "hosts": VirtualHost.objects.count(),
        "added": len(rows),
        "first_scan_sql_queries": len(captured.captured_queries),
    }


def _scan(storage_root: Path):  # noqa: ANN202
    """One scan as the daily job runs it (due renewals enqueued on Redis, no worker runs them)."""
    from modoboa_pro.virtualhosts import jobs
    from modoboa_pro.virtualhosts import scan as scan_module

    return scan_module.run(
        storage_root,
        THRESHOLD_DAYS,
        jobs._enqueue_scheduled_renewal,  # noqa: SLF001 (what the daily job passes)
        ari_source=_no_ca,
    )


def mark_due(percent: int) -> int:
    """Make ``percent`` % of the hosts due, as the CA's renewal information (ARI) would:
    a suggested renewal time in the past, for the very certificate on disk."""
    import datetime

    from django.utils import timezone

    from modoboa_pro.virtualhosts.models import VirtualHost

    VirtualHost.objects.update(ari_renew_at=None)
    if not percent:
        return 0
    every = 100 // percent
    ids = list(VirtualHost.objects.order_by("id").values_list("id", flat=True))[::every]
    return VirtualHost.objects.filter(id__in=ids).update(
        ari_renew_at=timezone.now() - datetime.timedelta(hours=1)
    )


def _no_ca():  # noqa: ANN202
    raise AssertionError("the scan asked the CA: the bench's hosts were set up as just asked")


def scan(storage_root: Path, due_percent: int, repeat: int) -> dict:
    """``repeat`` scans, ``due_percent`` % of the hosts due; Redis is emptied between scans
    so that each one enqueues its due renewals again."""
    _django()
    import django_rq
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    marked = mark_due(due_percent)
    redis = django_rq.get_connection("modoboa")
    rss_before = _status_kib("VmRSS")
    seconds, queries, reports = [], [], []
    for _ in range(repeat):
        redis.flushdb()
        with CaptureQueriesContext(connection) as captured:
            began = time.perf_counter()
            report = _scan(storage_root)
            seconds.append(time.perf_counter() - began)
        queries.append(len(captured.captured_queries))
        reports.append({"seen": report.seen, "due": report.due, "enqueued": len(report.enqueued)})
    return {
        "marked_due": marked,
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(statistics.median(seconds), 4),
        "sql_queries": queries,
        "report": reports[-1],
        "rss_before_kib": rss_before,
        "peak_rss_kib": _status_kib("VmHWM"),
        "peak_growth_kib": _status_kib("VmHWM") - rss_before,
    }


def bare(storage_root: Path, count: int, repeat: int) -> dict:
    """The floor of a scan: read each host's fullchain.pem and parse its first certificate."""
    from cryptography import x509

    from bench.certfiles import hostname
    from modoboa_pro.virtualhosts.adapters import storage

    paths = [storage.certificate_paths(storage_root, hostname(i))[0] for i in range(count)]
    rss_before = _status_kib("VmRSS")
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        for path in paths:
            x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc  # noqa: B018
        seconds.append(time.perf_counter() - began)
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(statistics.median(seconds), 4),
        "rss_before_kib": rss_before,
        "peak_rss_kib": _status_kib("VmHWM"),
        "peak_growth_kib": _status_kib("VmHWM") - rss_before,
    }


def profile(storage_root: Path, stats_path: Path) -> dict:
    """One scan (nothing due) under cProfile; the top functions by own and by total time."""
    import cProfile
    import pstats

    _django()
    mark_due(0)
    _scan(storage_root)  # imports and first-use caches out of the profile, as in a worker
    profiler = cProfile.Profile()
    profiler.enable()
    report = _scan(storage_root)
    profiler.disable()
    profiler.dump_stats(stats_path)
    stats = pstats.Stats(str(stats_path))
    total = stats.total_tt  # type: ignore[attr-defined]

    def top(key: int) -> list[dict]:
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True)[:15]  # type: ignore[attr-defined]
        return [
            {
                "where": f"{func} ({_short_path(path)}:{line})",
                "calls": calls,
                "own_s": round(own, 4),
                "total_s": round(cumulative, 4),
                "share_total": round(cumulative / total, 3),
            }
            for (path, line, func), (_, calls, own, cumulative, _) in rows
        ]

    return {
        "hosts": report.seen,
        "profiled_s": round(total, 3),
        "by_own_time": top(2),
        "by_total_time": top(3),
    }


def _short_path(path: str) -> str:
    for marker in ("modoboa_pro/", "site-packages/", "lib/python3.11/"):
        if marker in path:
            return (marker if marker == "modoboa_pro/" else "") + path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("setup", "scan", "bare", "profile"))
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--due-percent", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "setup":
        out = setup(args.count, args.storage)
    elif args.mode == "scan":
        out = scan(args.storage, args.due_percent, args.repeat)
    elif args.mode == "profile":
        out = profile(args.storage, args.stats)
    else:
        out = bare(args.storage, args.count, args.repeat)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()

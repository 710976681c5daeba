"""The renewal scan at scale: no per-host list kept, content checks only for changed pairs,
SQL queries constant in the number of hosts (counts, never times)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts import constants, policy, scan
from modoboa_pro.virtualhosts.adapters import pair_reader, storage
from modoboa_pro.virtualhosts.models import VirtualHost

from .chain.test_garbage_pairs import key_mismatch, truncate_chain

DAY = datetime.timedelta(days=1)
# See tests/adapters/test_pair_reader.py: longer than a tick of file times.
TICK = 0.05


@pytest.fixture
def root(db, tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(pair_reader, "STAMP_SETTLE_NS", int(TICK * 1e9) // 2)
    return tmp_path / "acme"


def add_hosts(root: Path, first: int, count: int) -> list[str]:
    names = [f"h{i:03d}.scan.example.test" for i in range(first, first + count)]
    not_before, not_after = validity(remaining=60 * DAY)
    for name in names:
        storage.write_certificate_pair(
            root, name, *make_chain_pem([name], not_before=not_before, not_after=not_after)
        )
    VirtualHost.objects.bulk_create(
        [VirtualHost(hostname=name, status=constants.STATUS_ACTIVE) for name in names]
    )
    time.sleep(TICK)  # settled: the scan records their stamps
    return names


def scan_counting(root: Path, **kwargs) -> tuple[scan.ScanReport, int]:
    with CaptureQueriesContext(connection) as queries:
        report = scan.run(root, 30, None, **kwargs)
    return report, len(queries.captured_queries)


def test_a_scan_keeps_counts_not_a_verdict_per_host(root):
    add_hosts(root, 0, 3)
    report, _ = scan_counting(root)
    assert report.seen == 3 and report.skipped[policy.SKIP_NOT_DUE] == 3
    assert report.verdicts == []
    assert "3 enabled host(s) seen, 0 due" in report.summary()
    assert "3 not due" in report.summary()
    # The dry run lists every host (``virtualhosts scan --dry-run``), and so does who asks.
    assert len(scan.run(root, 30, None, dry_run=True).verdicts) == 3
    assert len(scan.run(root, 30, None, list_verdicts=True).verdicts) == 3


def test_unchanged_pairs_skip_their_content_checks_changed_ones_do_not(root):
    names = add_hosts(root, 0, 4)
    first, first_queries = scan_counting(root)
    assert (first.pairs_checked, first.pairs_unchanged) == (4, 0)
    assert all(VirtualHost.objects.values_list("pair_stamp", flat=True))
    steady, steady_queries = scan_counting(root)
    assert (steady.pairs_checked, steady.pairs_unchanged) == (0, 4)
    # The first scan also recorded the facts (one UPDATE a host) and the stamps (one UPDATE).
    assert first_queries == steady_queries + 4 + 1

    # Twice the hosts: the same queries once their first scan is done.
    add_hosts(root, 4, 4)
    scan_counting(root)
    doubled, doubled_queries = scan_counting(root)
    assert (doubled.pairs_checked, doubled.pairs_unchanged) == (0, 8)
    assert doubled_queries == steady_queries

    # Damaged after the scan verified them: a key replaced by another of the same size, in
    # place, and a chain whose second certificate is cut. Both found by the next scan.
    key_mismatch(root, names[0])
    truncate_chain(root, names[1])
    damaged, _ = scan_counting(root)
    assert (damaged.pairs_checked, damaged.pairs_unchanged) == (2, 6)
    assert damaged.unreadable == names[:2]
    for name, words in zip(names[:2], ("does not match", "certificate 2"), strict=True):
        host = VirtualHost.objects.get(hostname=name)
        assert host.status == constants.STATUS_FAILED and words in host.last_error
    # Still checked on every scan until replaced.
    again, _ = scan_counting(root)
    assert (again.pairs_checked, again.unreadable) == (2, names[:2])


def test_a_dry_run_records_no_stamp(root):
    add_hosts(root, 0, 2)
    report, _ = scan_counting(root, dry_run=True)
    assert report.pairs_checked == 2
    assert list(VirtualHost.objects.values_list("pair_stamp", flat=True)) == ["", ""]

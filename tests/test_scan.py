"""The renewal scan at scale: no per-host list kept, content checks only for changed pairs,
SQL queries constant in the number of hosts (counts, never times)."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts import constants, errors, policy, scan
from modoboa_pro.virtualhosts.adapters import pair_reader, storage, x509
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


@pytest.fixture
def pair_work(monkeypatch) -> dict[str, int]:
    """What a scan does per host, counted: opens of a pair's files, certificates parsed,
    model instances built."""
    counts = {"opened": 0, "parsed": 0, "models": 0}
    files = {constants.FULLCHAIN_FILENAME, constants.PRIVKEY_FILENAME}
    real_open = os.open

    def counting_open(path, *args, **kwargs):  # noqa: ANN001, ANN202
        counts["opened"] += os.path.basename(os.fspath(path)) in files
        return real_open(path, *args, **kwargs)

    def counting(key: str, real):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN202
            counts[key] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "open", counting_open)
    for name in ("load_leaf", "load_chain"):
        monkeypatch.setattr(x509, name, counting("parsed", getattr(x509, name)))
    real_from_db = VirtualHost.from_db.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(VirtualHost, "from_db", classmethod(counting("models", real_from_db)))
    return counts


def test_an_unchanged_scan_opens_parses_and_builds_nothing_per_host(root, pair_work):
    add_hosts(root, 0, 4)
    scan_counting(root)
    first = dict(pair_work)  # every check: both files opened, the chain parsed
    assert first["opened"] == 8 and first["parsed"] >= 4 and first["models"] == 4
    _, steady_queries = scan_counting(root)
    pair_work.update(opened=0, parsed=0, models=0)
    add_hosts(root, 4, 4)
    scan_counting(root)  # the new hosts' first scan: the same work, for them only
    assert pair_work == first
    pair_work.update(opened=0, parsed=0, models=0)
    report, queries = scan_counting(root)
    assert pair_work == {"opened": 0, "parsed": 0, "models": 0}
    assert (report.seen, report.skipped[policy.SKIP_NOT_DUE], report.settled_from_rows) == (8, 8, 8)
    assert (report.pairs_checked, report.pairs_unchanged) == (0, 8)
    assert queries == steady_queries
    assert "8 enabled host(s) seen, 0 due" in report.summary() and "8 not due" in report.summary()


def _outcome(report: scan.ScanReport) -> dict:
    return {
        name: getattr(report, name)
        for name in (
            "seen", "due", "disabled", "enqueued", "skipped", "without_certificate",
            "unreadable", "paused", "expired", "urgent", "errors", "pairs_unchanged",
        )
    }  # fmt: skip


def test_the_row_shortcut_decides_as_the_full_path(root):
    """Hosts in every state a row can say, decided by a dry run with the shortcut and by one
    listing every verdict (no shortcut): the same outcome; only the unchanged, not-due ones
    are settled from their rows."""
    names = add_hosts(root, 0, 12)
    scan_counting(root)
    now = timezone.now()
    ari_id = {n: storage.read_current(root, n).facts.ari_id for n in names}  # type: ignore[union-attr]
    hosts = {h.hostname: h for h in VirtualHost.objects.all()}
    planned = {n: hosts[n].next_attempt_at for n in names}
    assert all(planned.values())

    def change(index: int, **values: object) -> None:
        VirtualHost.objects.filter(hostname=names[index]).update(**values)

    # 0, 1: unchanged. 2: the CA's window for this certificate, passed: due.
    change(2, ari_cert_id=ari_id[names[2]], ari_renew_at=now - DAY)
    # 3: the CA's window for this certificate, to come, recorded as planned: not due.
    change(3, ari_cert_id=ari_id[names[3]], ari_renew_at=now + DAY, next_attempt_at=now + DAY)
    # 4: an ARI answer about another certificate (the decision ignores it).
    change(4, ari_cert_id="other.id", ari_renew_at=now - DAY)
    change(5, attempts=2, next_attempt_at=now + DAY)  # failing, backing off
    change(6, status=constants.STATUS_PAUSED)
    change(7, enabled=False)
    change(8, cert_serial="0badc0de")  # the row says another certificate than the files
    change(9, next_attempt_at=now - DAY)  # a plan that is not the policy's
    storage.certificate_paths(root, names[10])[1].chmod(0o644)  # the key exposed
    change(11, pair_stamp="")  # never stamped

    def both(**kwargs: object) -> tuple[scan.ScanReport, scan.ScanReport]:
        fast = scan.run(root, 30, None, dry_run=True, list_verdicts=False, **kwargs)  # type: ignore[arg-type]
        full = scan.run(root, 30, None, dry_run=True, list_verdicts=True, **kwargs)  # type: ignore[arg-type]
        assert full.settled_from_rows == 0
        assert _outcome(fast) == _outcome(full)
        return fast, full

    fast, full = both()
    # 0, 1, 3, and 4 (a dry run asks the CA nothing: the other certificate's answer is
    # ignored, as the full path ignores it).
    assert fast.settled_from_rows == 4
    by_name = {v.hostname: v for v in full.verdicts}
    assert [n for n in names if by_name[n].renews] == [names[2], names[10]]
    assert by_name[names[3]].renewal_source == policy.SOURCE_ARI
    assert by_name[names[5]].action == policy.SKIP_NOT_DUE
    assert (fast.paused, fast.disabled, fast.unreadable) == ([names[6]], 1, [names[10]])
    # A spread makes every lifetime plan another one; later, everything is due; a scan
    # run after expiry sees them expired.
    assert both(spread=datetime.timedelta(hours=6))[0].settled_from_rows == 1  # 3 (ARI)
    for days in (35, 59, 61):
        fast, full = both(now=now + days * DAY)
        assert fast.settled_from_rows == 0 and fast.due == full.due >= 10


def test_a_host_whose_renewal_information_is_to_be_asked_again_is_asked(root):
    names = add_hosts(root, 0, 3)
    scan_counting(root)
    now = timezone.now()
    for name in names:
        facts = storage.read_current(root, name).facts
        assert facts is not None
        VirtualHost.objects.filter(hostname=name).update(
            ari_cert_id=facts.ari_id, ari_recheck_at=now + DAY
        )
    asked = []

    def unreachable_ca():  # noqa: ANN202
        asked.append(1)
        raise errors.AcmeDirectoryUnreachable("the CA is unreachable in this test")

    report = scan.run(root, 30, None, ari_source=unreachable_ca)
    assert (report.settled_from_rows, asked) == (3, [])
    VirtualHost.objects.filter(hostname=names[1]).update(ari_recheck_at=now - DAY)
    report = scan.run(root, 30, None, ari_source=unreachable_ca)
    assert (report.settled_from_rows, asked) == (2, [1])


def test_rows_from_the_driver_convert_as_values_list_would(root):
    """The scan streams rows unconverted; a host it cannot settle from them gets the row
    Django would have returned, every datetime aware."""
    add_hosts(root, 0, 2)
    now = timezone.now().replace(microsecond=123456)
    VirtualHost.objects.filter(hostname__startswith="h000").update(
        cert_not_before=now - DAY, cert_not_after=now + DAY, next_attempt_at=now,
        failing_since=now, ari_renew_at=now, ari_recheck_at=now, last_success_at=now,
        enabled=False, attempts=3,
    )  # fmt: skip
    fields = scan._row_fields()
    expected = list(VirtualHost.objects.order_by("hostname").values_list(*fields))
    rows = scan._Rows(fields)
    got = [rows.converted(row) for row in rows]
    assert got == expected and got[0][fields.index("enabled")] is False
    converted = [v for v in got[0] if isinstance(v, datetime.datetime)]
    assert len(converted) == 8 and all(v.tzinfo is not None for v in converted)
    assert scan._aware(None, datetime.UTC) is None
    assert scan._aware("2026-11-29 10:00:00.5", datetime.UTC) == datetime.datetime(
        2026, 11, 29, 10, 0, 0, 500000, tzinfo=datetime.UTC
    )

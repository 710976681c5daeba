"""Bursts on PostgreSQL through two workers: creations, then renewals, all at once.

Through a deployed instance (``modoboa-admin.py deploy`` on a PostgreSQL cluster of its
own, two ``rqworker modoboa`` processes, the privileged worker, Pebble and nginx on
loopback). ``SCALE_HOSTS`` sets the burst size: 20 in the suite, 200 for the figures in
docs/reliability.md (``make scale``). The figures are printed and written to
``test-artefacts/scale.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from modoboa_pro.virtualhosts.adapters import pair_reader, storage, tls

from ..deployment import Stack

pytestmark = pytest.mark.scale

HOSTS = int(os.environ.get("SCALE_HOSTS", "20"))
THREADS = 20
SECONDS_PER_HOST = 4.0  # a generous bound on settling, far above what is measured
SETTLE_POLL = 0.5  # seconds: the granularity of the "all done after" figures
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"


def reloads_since(stack: Stack, offset: int) -> int:
    """Reloads since ``offset`` of nginx's error log: the master logs each SIGHUP it gets."""
    with open(stack.nginx.error_log_path, "rb") as log:
        log.seek(offset)
        return log.read().count(b"(SIGHUP) received")


def log_offset(stack: Stack) -> int:
    return stack.nginx.error_log_path.stat().st_size


def at_once(stack: Stack, method: str, paths: list[str], body=None) -> list[tuple[int, float]]:
    """Send one request per path from THREADS threads; (status, seconds) for each."""
    session = requests.Session()
    session.headers.update(stack.api.session.headers)
    base = f"{stack.api.base_url}/api/v2/"

    def send(path_and_body) -> tuple[int, float]:
        path, payload = path_and_body
        began = time.monotonic()
        answer = session.request(method, base + path, json=payload, timeout=120)
        return answer.status_code, time.monotonic() - began

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(send, [(p, body(p) if body else None) for p in paths]))


def settle(stack: Stack, names: list[str], done) -> tuple[dict[str, dict], float]:
    """Wait until ``done(host)`` or failed for every name; the hosts and the seconds taken."""
    began = time.monotonic()
    deadline = began + 60 + SECONDS_PER_HOST * len(names)
    wanted = set(names)
    while True:
        hosts = {h["hostname"]: h for h in stack.api.virtualhosts() if h["hostname"] in wanted}
        if len(hosts) == len(wanted) and all(
            done(h) or h["status"] == "failed" for h in hosts.values()
        ):
            return hosts, time.monotonic() - began
        if time.monotonic() > deadline:
            return hosts, time.monotonic() - began
        time.sleep(SETTLE_POLL)


def latency(answers: list[tuple[int, float]]) -> dict[str, float]:
    seconds = sorted(s for _, s in answers)
    return {
        "p50_s": round(statistics.median(seconds), 3),
        "p95_s": round(seconds[int(0.95 * (len(seconds) - 1))], 3),
        "max_s": round(seconds[-1], 3),
    }


def orders_per_host(stack: Stack) -> dict[str, int]:
    """Successful orders per host, from the hosts' recorded history."""
    out = stack.shell(
        "import json\n"
        "from django.db.models import Count\n"
        "from modoboa_pro.virtualhosts.models import VirtualHostEvent\n"
        "rows = (VirtualHostEvent.objects.filter(step='order', outcome='ok')\n"
        "        .values('virtualhost__hostname').annotate(n=Count('id')))\n"
        "print(json.dumps({r['virtualhost__hostname']: r['n'] for r in rows}))\n"
    )
    return json.loads(out.strip().splitlines()[-1])


def served(stack: Stack, hostname: str) -> str:
    return tls.fetch_served_certificate("127.0.0.1", stack.nginx.https_port, hostname).serial


def stored(stack: Stack, hostname: str) -> str:
    current = storage.read_current(stack.demo.root / "acme", hostname)
    assert current.problem is None and current.facts is not None, (hostname, current.problem)
    return current.facts.serial


def test_creations_then_renewals_all_at_once_on_postgresql(pg_stack: Stack):
    stack = pg_stack
    names = [f"load{i:03d}.example.test" for i in range(HOSTS)]
    figures: dict[str, object] = {"hosts": HOSTS, "threads": THREADS, "modoboa_workers": 2}

    # -- creations ------------------------------------------------------------------------
    offset = log_offset(stack)
    began = time.monotonic()
    session_names = iter(names)
    answers = at_once(
        stack, "POST", ["virtualhosts/"] * HOSTS, body=lambda _: {"hostname": next(session_names)}
    )
    statuses = sorted({code for code, _ in answers})
    assert statuses == [201], [code for code, _ in answers if code != 201][:10]
    hosts, _ = settle(stack, names, lambda h: h["status"] == "active")
    failed = {
        n: (h["status"], h["last_error"]) for n, h in hosts.items() if h["status"] != "active"
    }
    assert failed == {}, failed
    figures["create"] = {
        **latency(answers),
        "all_active_after_s": round(time.monotonic() - began, 1),
        "nginx_reloads": reloads_since(stack, offset),
    }
    # Coalesced: every host changed its site twice (HTTP-only, then HTTPS).
    assert figures["create"]["nginx_reloads"] < 2 * HOSTS, figures  # type: ignore[index]
    # None lost or duplicated: one row, one site file and one order per name.
    assert len(hosts) == HOSTS
    sites = sorted(p.name for p in stack.nginx.sites_dir.iterdir() if p.name.startswith("load"))
    assert sites == sorted(f"{n}.conf" for n in names)
    assert orders_per_host(stack) == dict.fromkeys(names, 1)
    first = {n: h["certificate"]["serial"] for n, h in hosts.items()}
    assert {n: served(stack, n) for n in names} == first
    assert {n: stored(stack, n) for n in names} == first

    # -- renewals (Renew now on every host at once) ----------------------------------------
    offset = log_offset(stack)
    began = time.monotonic()
    ids = [hosts[n]["id"] for n in names]
    answers = at_once(stack, "POST", [f"virtualhosts/{i}/renew/" for i in ids])
    assert sorted({code for code, _ in answers}) == [202]
    hosts, _ = settle(
        stack,
        names,
        lambda h: h["status"] == "active" and h["certificate"]["serial"] != first[h["hostname"]],
    )
    not_renewed = {
        n: (h["status"], h["last_error"])
        for n, h in hosts.items()
        if h["status"] != "active" or h["certificate"]["serial"] == first[n]
    }
    assert not_renewed == {}, not_renewed
    renewal_reloads = reloads_since(stack, offset)
    figures["renew"] = {
        **latency(answers),
        "all_renewed_after_s": round(time.monotonic() - began, 1),
        "nginx_reloads": renewal_reloads,
    }
    second = {n: h["certificate"]["serial"] for n, h in hosts.items()}
    assert {n: served(stack, n) for n in names} == second
    assert {n: stored(stack, n) for n in names} == second
    assert orders_per_host(stack) == dict.fromkeys(names, 2)
    # Coalesced: renewals share reloads instead of one each.
    assert renewal_reloads <= HOSTS // 4, figures

    # -- the daily scan on PostgreSQL (aware datetimes from the driver, server-side cursor) --
    time.sleep(pair_reader.STAMP_SETTLE_NS / 1e9)  # the renewed pairs get their stamps
    scans = json.loads(
        stack.shell(
            "import json\n"
            "from pathlib import Path\n"
            "from modoboa_pro.virtualhosts import conf, scan\n"
            "root = Path(conf.param('acme_account_storage_path'))\n"
            "reports = [scan.run(root, 30, None, list_verdicts=False) for _ in range(2)]\n"
            "print(json.dumps([[r.seen, r.due, r.settled_from_rows, r.pairs_checked]\n"
            "                  for r in reports]))\n"
        ).strip().splitlines()[-1]
    )
    figures["scans"] = scans
    # The first reads every renewed pair and records its stamp; the second settles every
    # host from its row, as on a usual day.
    assert scans == [[HOSTS, 0, 0, HOSTS], [HOSTS, 0, HOSTS, 0]], scans

    ARTEFACTS.mkdir(exist_ok=True)
    (ARTEFACTS / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + json.dumps(figures))

"""A burst of creations while the workers run: every API call answers, every host ends active.

Through the deployed instance (SQLite, as ``make demo`` and small instances use): 50 POSTs
at once from 10 threads while the ``modoboa`` worker provisions the first ones. Before the
instance used IMMEDIATE transactions, 1-3 % of such calls answered 500 "database is locked".
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ..deployment import Stack

pytestmark = pytest.mark.operations

HOSTS = 50
THREADS = 10
SETTLE_TIMEOUT = 300.0
# One API call listing the hosts: cheap next to the worker's pace (about 2 s per host).
SETTLE_POLL = 0.5


def test_fifty_creations_at_once_all_answer_and_all_get_certificates(stack: Stack):
    names = [f"burst{i:02d}.beta.test" for i in range(HOSTS)]
    session = requests.Session()
    session.headers.update(stack.api.session.headers)
    url = f"{stack.api.base_url}/api/v2/virtualhosts/"

    def create(name: str) -> tuple[int, str]:
        answer = session.post(url, json={"hostname": name}, timeout=60)
        return answer.status_code, answer.text[:300]

    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(create, names))
    failures = [(n, a) for n, a in zip(names, answers, strict=True) if a[0] != 201]
    assert failures == [], failures

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        hosts = {h["hostname"]: h for h in stack.api.virtualhosts() if h["hostname"] in names}
        if all(h["status"] in ("active", "failed") for h in hosts.values()):
            break
        time.sleep(SETTLE_POLL)
    statuses = {name: hosts[name]["status"] for name in names}
    assert set(statuses.values()) == {"active"}, {
        n: (hosts[n]["status"], hosts[n]["last_error"]) for n in names if statuses[n] != "active"
    }
    # None lost or duplicated: one row and one site file per name.
    assert len(hosts) == HOSTS
    sites = sorted(p.name for p in stack.nginx.sites_dir.iterdir() if p.name.startswith("burst"))
    assert sites == sorted(f"{n}.conf" for n in names)

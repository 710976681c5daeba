"""A 6-day certificate renewed at about half-life over a simulated fortnight, never looping.

Its own Pebble issues 6-day certificates (``certificateValidityPeriod``, as Let's Encrypt's
``shortlived`` profile). The clock moves through 14 days in steps (``timezone.now``, read by
the scan, the sweep and the runs, as in test_spread.py); at each step the retry sweep runs,
and the daily scan once a day. Pebble and nginx stay on real time, so each certificate is
read as issued at the simulated time of its order: its validity is shifted by the clock's
offset then (a seam on ``x509._facts``, keyed by serial, so re-reading it later agrees).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

import pytest
from django.utils import timezone

from modoboa_pro.testing import PebbleServer
from modoboa_pro.virtualhosts import constants, jobs, policy
from modoboa_pro.virtualhosts.adapters import x509
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_renewal import served_serial

pytestmark = pytest.mark.chain

DAY = datetime.timedelta(days=1)
LIFETIME = 6 * DAY
STEP = datetime.timedelta(minutes=10)  # the sweep runs every 5 minutes in cron_config.py
SPREAD = datetime.timedelta(hours=4)  # VIRTUALHOSTS_RENEWAL_SPREAD's default


@pytest.fixture(scope="module")
def shortlived_pebble(
    tmp_path_factory: pytest.TempPathFactory, nginx_server, dns_responder
) -> Iterator[PebbleServer]:
    server = PebbleServer(
        tmp_path_factory.mktemp("pebble-6d"),
        http_port=nginx_server.http_port,
        dns_address=dns_responder.address,
        validity_seconds=int(LIFETIME.total_seconds()),
    )
    server.start()
    yield server
    server.stop()


def test_a_6_day_certificate_is_renewed_at_half_life_for_a_fortnight(
    chain: Chain, shortlived_pebble: PebbleServer, settings, monkeypatch
):
    settings.ACME_DIRECTORY_URL = shortlived_pebble.directory_url
    settings.ACME_CA_BUNDLE = str(shortlived_pebble.ca_bundle)
    real_now = timezone.now
    start = real_now()
    clock = {"now": start}
    monkeypatch.setattr(timezone, "now", lambda: clock["now"])

    shifts: dict[str, datetime.timedelta] = {}
    facts_of = x509._facts

    def simulated(cert) -> x509.CertificateFacts:
        facts = facts_of(cert)
        shift = shifts.setdefault(facts.serial, clock["now"] - real_now())
        return dataclasses.replace(
            facts, not_before=facts.not_before + shift, not_after=facts.not_after + shift
        )

    monkeypatch.setattr(x509, "_facts", simulated)

    hostname = "short.example.test"
    host = VirtualHost.objects.create(hostname=hostname)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    lifetime = host.cert_not_after - host.cert_not_before
    assert abs(lifetime - LIFETIME) < datetime.timedelta(minutes=1)  # Pebble's setting

    certificates = [(host.cert_serial, host.cert_not_before, host.cert_not_after)]
    renewed_at: list[datetime.datetime] = []
    last_scan = start
    while clock["now"] < start + 14 * DAY:
        clock["now"] += STEP
        swept = jobs.retry_due_virtualhosts()
        assert swept["retried"] == []
        if clock["now"] - last_scan >= DAY:  # the daily scan: the safety net
            last_scan = clock["now"]
            jobs.check_certificate_renewals()
        chain.drain()
        assert chain.failed_jobs() == []
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, (clock["now"], host.last_error)
        if host.cert_serial != certificates[-1][0]:
            renewed_at.append(clock["now"])
            certificates.append((host.cert_serial, host.cert_not_before, host.cert_not_after))
            assert served_serial(chain, hostname) == host.cert_serial

    # Day 3, 6, 9 and 12, each plus its share of the spread: four renewals, no more.
    assert len(renewed_at) == 4, renewed_at
    for (serial, not_before, not_after), at in zip(certificates, renewed_at, strict=False):
        half_life = not_before + (not_after - not_before) / 2
        due = policy.renewal_due_at(30, not_before, not_after)
        assert due == half_life  # under 10 days: half-life (the 30-day threshold is capped)
        planned = policy.planned_renewal_at(
            30, not_before, not_after, spread=SPREAD, share=policy.jitter(hostname, serial)
        )
        assert half_life <= planned <= half_life + SPREAD
        # Renewed by the first step at or after its planned time: within the spread.
        assert planned <= at < planned + STEP, (serial, planned, at)
    gaps = [b - a for a, b in zip([start, *renewed_at], renewed_at, strict=False)]
    assert all(gap >= LIFETIME / 2 - STEP for gap in gaps), gaps  # never two in a row
    orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
    assert orders.count() == 1 + 4  # the first certificate, then exactly one per renewal

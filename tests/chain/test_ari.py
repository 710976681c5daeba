"""ARI (RFC 9773) end to end: the ARI double in front of the real Pebble, nginx and Redis.

The CA's window decides when a host renews (not before the time chosen in it), the renewal
names the certificate it replaces (and is sent again without it when the CA refuses that),
an unusable window falls back to the lifetime rule, and a CA without ARI (plain Pebble)
is not asked. Every certificate is issued by Pebble and checked as nginx serves it.
"""

from __future__ import annotations

import datetime
import io
import json
import time
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from modoboa_pro.testing import (
    AcmeProxy,
    Problem,
    RenewalAnswer,
    already_replaced,
    window,
)
from modoboa_pro.testing.acme_proxy import MALFORMED
from modoboa_pro.virtualhosts import jobs, policy, scan
from modoboa_pro.virtualhosts.adapters import storage
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, proxied_ca
from .test_failures import provision_active
from .test_renewal import served_serial, stand_in

pytestmark = pytest.mark.chain

SECOND = datetime.timedelta(seconds=1)
DAY = datetime.timedelta(days=1)
EXPLANATION = "https://ca.example.test/incident-42"


@pytest.fixture
def ca(chain: Chain, settings) -> Iterator[AcmeProxy]:
    """Pebble with ARI: the plugin talks to it through the double."""
    with proxied_ca(chain, settings, renewal_info=True) as proxy:
        yield proxy


def later_window(days: float = 60) -> RenewalAnswer:
    start = timezone.now() + days * DAY
    return window(start, start + DAY, retry_after="21600")


def served_id(chain: Chain, host: VirtualHost) -> str:
    """The ARI id of the certificate in the host's files, checked to be the one served."""
    facts = storage.read_current(chain.storage, host.hostname).facts
    assert facts is not None and facts.ari_id, "Pebble's certificates carry an AKI"
    assert served_serial(chain, host.hostname) == facts.serial
    return facts.ari_id


def shown_by_api(host: VirtualHost) -> dict:
    """The host as the API gives it to the page (GET /api/v2/virtualhosts/<id>/)."""
    from modoboa.core.models import User
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=User.objects.get(username="admin"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    answer = client.get(f"/api/v2/virtualhosts/{host.pk}/")
    assert answer.status_code == 200, answer.content
    return answer.json()


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("virtualhosts", *args, stdout=out)
    return out.getvalue()


def nothing_enqueued(host: VirtualHost) -> None:
    pytest.fail(f"{host.hostname} renewed before its time")


def test_renewal_happens_at_the_ari_time_not_before_and_replaces_the_old_one(
    chain: Chain, ca: AcmeProxy
):
    hostname = "ari-time.example.test"
    start = timezone.now() + 8 * SECOND
    ca.set_renewal_info(
        None, window(start, start + SECOND, retry_after="21600", explanation_url=EXPLANATION)
    )
    host = provision_active(chain, hostname)
    old_id = served_id(chain, host)
    assert ca.renewal_info_asked() == [old_id]  # asked once, right after issuance
    assert host.ari_cert_id == old_id
    assert start.replace(microsecond=0) <= host.ari_renew_at <= start + SECOND
    assert host.next_attempt_at == host.ari_renew_at  # what the page shows as the next run
    shown = shown_by_api(host)
    assert shown["renewal_source"] == "ari"
    assert parse_datetime(shown["planned_renewal_at"]) == host.ari_renew_at
    assert shown["renewal_explanation_url"] == EXPLANATION
    assert [o.get("replaces") for o in ca.orders()] == [None]  # a first certificate
    shown_by_cli = command("show", hostname)
    assert f"{'  Renewal due:':<17}{host.ari_renew_at:%Y-%m-%d %H:%M} UTC" in shown_by_cli
    assert f"{'  Decided by:':<17}the CA's renewal window (ARI), see {EXPLANATION}" in shown_by_cli
    (dry,) = json.loads(command("scan", "--dry-run", "--json"))
    assert (dry["action"], dry["renewal_source"]) == ("skip", "ari")

    # Before the time: neither the scan nor its dry run renews, and nobody asks the CA again
    # (its Retry-After is six hours away).
    early = host.ari_renew_at - SECOND
    dry = scan.run(chain.storage, 30, None, now=early, dry_run=True).verdicts
    assert [(v.action, v.renewal_source) for v in dry] == [(policy.SKIP_NOT_DUE, "ari")]
    assert "the CA's renewal window" in dry[0].reason
    assert jobs.check_certificate_renewals()["enqueued"] == []
    assert ca.renewal_info_asked() == [old_id]
    dry = scan.run(chain.storage, 30, None, now=host.ari_renew_at, dry_run=True).verdicts
    assert [(v.action, v.renewal_source) for v in dry] == [(policy.RENEW, "ari")]

    # At the time (real time: the renewal job decides again under the host's lock).
    time.sleep(max((host.ari_renew_at - timezone.now()).total_seconds(), 0) + 0.1)
    ca.set_renewal_info(None, later_window())  # what the CA says about the next certificate
    assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
    chain.drain()
    host.refresh_from_db()
    new_id = served_id(chain, host)
    assert new_id != old_id
    assert [o.get("replaces") for o in ca.orders()] == [None, old_id]
    # The new certificate was asked about at once: planned in its own window, no loop.
    assert ca.renewal_info_asked() == [old_id, new_id]
    assert host.ari_cert_id == new_id
    assert host.ari_renew_at > timezone.now() + 59 * DAY
    assert jobs.check_certificate_renewals()["enqueued"] == []


@pytest.mark.parametrize(
    "refusal",
    [already_replaced(), Problem(400, MALFORMED, "replaces: unknown field")],
    ids=["alreadyReplaced", "malformed"],
)
def test_a_refused_replaces_is_ordered_again_without_it(
    chain: Chain, ca: AcmeProxy, refusal: Problem
):
    hostname = f"ari-{refusal.type.rsplit(':', 1)[1].lower()}.example.test"
    # A window that has passed: renew now (as after a CA's revocation notice).
    ca.set_renewal_info(None, window(timezone.now() - 2 * DAY, timezone.now() - DAY))
    host = provision_active(chain, hostname)
    old_id = served_id(chain, host)
    assert host.ari_renew_at is not None and host.ari_renew_at <= timezone.now()

    ca.set_renewal_info(None, later_window())
    ca.refuse("newOrder", refusal, times=1)
    assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
    chain.drain()
    host.refresh_from_db()
    assert host.status == "active", host.last_error
    assert served_id(chain, host) != old_id
    assert [o.get("replaces") for o in ca.orders()] == [None, old_id, None]
    assert ca.count("newOrder", refused=True) == 1


@pytest.mark.parametrize(
    "answer",
    [
        window(timezone.now() + 10 * DAY, timezone.now() + 9 * DAY, retry_after="7200"),
        RenewalAnswer('{"suggestedWindow": {"start": "soon"}}', headers={"Retry-After": "7200"}),
        RenewalAnswer("{}", status=503, headers={"Retry-After": "7200"}),
    ],
    ids=["end-before-start", "malformed", "http-503"],
)
def test_an_unusable_window_falls_back_to_the_lifetime_rule(
    chain: Chain, ca: AcmeProxy, answer: RenewalAnswer
):
    ca.set_renewal_info(None, answer)
    asked_at = timezone.now()
    host = provision_active(chain, "ari-unusable.example.test")
    cert_id = served_id(chain, host)
    assert host.ari_cert_id == cert_id and host.ari_renew_at is None
    assert asked_at + 2 * 3600 * SECOND <= host.ari_recheck_at  # the CA's Retry-After
    due = policy.renewal_due_at(30, host.cert_not_before, host.cert_not_after)
    # Planned by the lifetime rule: its due time plus the host's share of the spread.
    assert host.next_attempt_at == policy.planned_renewal_at(
        30,
        host.cert_not_before,
        host.cert_not_after,
        spread=jobs.read_settings().renewal_spread,
        share=policy.jitter(host.hostname, host.cert_serial),
    )
    shown = shown_by_api(host)
    assert (shown["renewal_source"], parse_datetime(shown["planned_renewal_at"])) == (
        "lifetime",
        due,
    )
    # Not asked again before the CA's Retry-After; once after it, in one scan.
    assert jobs.check_certificate_renewals()["enqueued"] == []
    assert ca.renewal_info_asked() == [cert_id]
    report = scan.run(
        chain.storage,
        30,
        nothing_enqueued,
        now=host.ari_recheck_at + SECOND,
        ari_source=_ca(),
        list_verdicts=True,
    )
    assert [v.renewal_source for v in report.verdicts] == ["lifetime"]
    assert ca.renewal_info_asked() == [cert_id, cert_id]
    host.refresh_from_db()
    scan.run(
        chain.storage, 30, nothing_enqueued, now=host.ari_recheck_at - SECOND, ari_source=_ca()
    )
    assert ca.renewal_info_asked() == [cert_id, cert_id]
    # The CA answers usably again: its window decides from then on.
    ca.set_renewal_info(cert_id, later_window(20))
    scan.run(
        chain.storage, 30, nothing_enqueued, now=host.ari_recheck_at + SECOND, ari_source=_ca()
    )
    host.refresh_from_db()
    assert host.ari_renew_at is not None and host.ari_renew_at < due
    assert shown_by_api(host)["renewal_source"] == "ari"


def _ca():
    """What the daily scan asks renewal windows with (jobs.check_certificate_renewals)."""
    return lambda: jobs.make_acme(jobs.read_settings())


def test_a_ca_without_renewal_info_keeps_the_lifetime_rule(chain: Chain, settings):
    """Plain Pebble (2.4, no ARI) behind a recording proxy: nothing asked, no ``replaces``."""
    with proxied_ca(chain, settings) as proxy:
        hostname = "no-ari.example.test"
        host = stand_in(chain, hostname)  # 5 days left of 90: due by the lifetime rule
        chain.nginx.reload()
        old = storage.read_current(chain.storage, hostname).facts
        assert old is not None and old.ari_id  # it could be named, but must not be
        dry = scan.run(chain.storage, 30, None, dry_run=True).verdicts
        assert [(v.action, v.renewal_source) for v in dry] == [(policy.RENEW, "lifetime")]
        assert jobs.check_certificate_renewals()["enqueued"] == [hostname]
        chain.drain()
        host.refresh_from_db()
        assert host.status == "active", host.last_error
        assert served_serial(chain, hostname) != old.serial
        assert [o.get("replaces") for o in proxy.orders()] == [None]
        assert proxy.count("renewalInfo") == 0
        assert (host.ari_cert_id, host.ari_renew_at) == ("", None)
        shown = shown_by_api(host)
        assert shown["renewal_source"] == "lifetime"
        assert parse_datetime(shown["planned_renewal_at"]) == policy.renewal_due_at(
            30, host.cert_not_before, host.cert_not_after
        )

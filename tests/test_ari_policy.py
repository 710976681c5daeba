"""The renewal decision with ARI: the time chosen in the CA's window first, the lifetime rule
otherwise (pure policy, no I/O)."""

from __future__ import annotations

import datetime
import random

from modoboa_pro.virtualhosts import policy
from modoboa_pro.virtualhosts.adapters.storage import StoredCertificate
from modoboa_pro.virtualhosts.adapters.x509 import CertificateFacts

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
HOST = "ari.example.com"


def facts(ari_id: str = "k.s", days: int = 90, issued: datetime.datetime = NOW) -> CertificateFacts:
    return CertificateFacts(
        serial="1", not_before=issued, not_after=issued + days * DAY, issuer="CA",
        names=(HOST,), fingerprint_sha256="00", ari_id=ari_id,
    )  # fmt: skip


def test_a_future_window_gives_a_time_inside_it_spread_at_random() -> None:
    start, end = NOW + 50 * DAY, NOW + 52 * DAY
    rng = random.Random(1)
    chosen = {policy.ari_renewal_time(NOW, start, end, rng) for _ in range(50)}
    assert all(start <= when <= end for when in chosen)
    assert len(chosen) == 50  # not all at the start


def test_a_started_or_passed_window_means_now() -> None:
    assert policy.ari_renewal_time(NOW, NOW - DAY, NOW + DAY) == NOW
    assert policy.ari_renewal_time(NOW, NOW - 3 * DAY, NOW - 2 * DAY) == NOW


def test_the_stored_ari_time_decides_before_the_lifetime_rule() -> None:
    stored = StoredCertificate(facts())
    ari_at = NOW + 10 * DAY  # far earlier than 30 days before expiry (day 60)
    before = policy.decide_stored(NOW + 9 * DAY, 30, HOST, stored, ari=("k.s", ari_at))
    assert (before.action, before.source, before.due_at) == (policy.SKIP_NOT_DUE, "ari", ari_at)
    assert "the CA's renewal window" in before.reason
    at = policy.decide_stored(ari_at, 30, HOST, stored, ari=("k.s", ari_at))
    assert (at.action, at.source) == (policy.RENEW, "ari")


def test_a_later_ari_time_holds_the_renewal_past_the_lifetime_rule() -> None:
    stored = StoredCertificate(facts())
    ari_at = NOW + 80 * DAY
    later = policy.decide_stored(NOW + 70 * DAY, 30, HOST, stored, ari=("k.s", ari_at))
    assert (later.action, later.source) == (policy.SKIP_NOT_DUE, "ari")


def test_an_answer_about_another_certificate_is_ignored() -> None:
    stored = StoredCertificate(facts(ari_id="k.new"))
    decision = policy.decide_stored(NOW + 9 * DAY, 30, HOST, stored, ari=("k.old", NOW))
    assert (decision.action, decision.source) == (policy.SKIP_NOT_DUE, "lifetime")
    assert decision.due_at == NOW + 60 * DAY


def test_an_ari_time_at_or_after_expiry_falls_back_to_the_lifetime_rule() -> None:
    cert = facts()
    assert policy.planned_renewal(30, cert.not_before, cert.not_after, cert.not_after) == (
        NOW + 60 * DAY,
        "lifetime",
    )


def test_without_ari_the_lifetime_rule_as_before() -> None:
    decision = policy.decide_stored(NOW, 30, HOST, StoredCertificate(facts()))
    assert (decision.source, decision.due_at) == ("lifetime", NOW + 60 * DAY)


def test_a_host_waiting_for_its_ari_time_is_not_overdue() -> None:
    cert = facts()
    late = NOW + 65 * DAY  # past the lifetime rule's time (day 60) and its grace
    assert policy.is_overdue(late, 30, cert.not_before, cert.not_after)
    assert not policy.is_overdue(late, 30, cert.not_before, cert.not_after, NOW + 64 * DAY)
    assert policy.is_overdue(late, 30, cert.not_before, cert.not_after, NOW + 62 * DAY)

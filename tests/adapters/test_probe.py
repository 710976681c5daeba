"""How many answers the probes ask for: one once reloads wait for nginx, a streak otherwise."""

from __future__ import annotations

import datetime

import pytest

from modoboa_pro.virtualhosts.adapters import probe
from modoboa_pro.virtualhosts.adapters.x509 import CertificateFacts
from modoboa_pro.virtualhosts.errors import DeployNotVerified, NginxError

NOW = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC)


def facts(serial: str) -> CertificateFacts:
    return CertificateFacts(serial, NOW, NOW, "CA", ("a.test",), "00")


class Answers:
    """Serials nginx answers, one per handshake; the last one repeats."""

    def __init__(self, *serials: str) -> None:
        self.serials = list(serials)
        self.calls = 0

    def __call__(self, hostname: str) -> CertificateFacts:
        serial = self.serials[min(self.calls, len(self.serials) - 1)]
        self.calls += 1
        if serial == "refused":
            raise NginxError("handshake refused")
        return facts(serial)


def test_after_a_confirmed_reload_one_handshake_tells():
    answers = Answers("new")
    assert probe.confirm_served(answers, "a.test", "new", 443, stable=1).serial == "new"
    assert answers.calls == 1


def test_without_confirmation_a_streak_is_required_and_restarts_on_an_old_answer():
    answers = Answers("new", "new", "old", "refused", "new")
    assert probe.confirm_served(answers, "a.test", "new", 443).serial == "new"
    # Two good answers, two that reset the streak, then the full streak.
    assert answers.calls == 4 + probe.STABLE_SUCCESSES


def test_an_old_certificate_is_reported_with_what_was_seen(monkeypatch):
    monkeypatch.setattr(probe, "VERIFY_TIMEOUT", 0.2)
    with pytest.raises(DeployNotVerified, match=r"expected serial new, last saw: serial old"):
        probe.confirm_served(Answers("old"), "a.test", "new", 443, stable=1)

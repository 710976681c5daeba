"""The pause: a host failing for days, or paused by the CA, is no longer retried.

The rule (``policy.should_pause``), the CA's pause answer (``acme._map_problem``), and what
a failure records (``recording.mark_failure``): status, message, retry time, alarm.
"""

from __future__ import annotations

import datetime
import logging

import pytest
from acme import messages
from django.utils import timezone

from modoboa_pro.testing import paused
from modoboa_pro.virtualhosts import constants, policy, recording
from modoboa_pro.virtualhosts.adapters import acme
from modoboa_pro.virtualhosts.errors import (
    AcmePaused,
    AcmeRateLimited,
    AcmeUnauthorized,
    PreflightDnsFailed,
)
from modoboa_pro.virtualhosts.models import VirtualHost

from .chain.test_failures import open_alarms

NOW = datetime.datetime(2026, 11, 29, 3, 17, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
LINK = "https://portal.letsencrypt.org/sfe/v1/unpause?jwt=eyJ0ZXN0IjoxfQ.e30.c2lnbmF0dXJl"


# -- the rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing_for", "pause_after", "expected"),
    [
        (None, policy.PAUSE_AFTER, False),  # not failing
        (DAY * 6 + datetime.timedelta(hours=23), policy.PAUSE_AFTER, False),
        (DAY * 7, policy.PAUSE_AFTER, True),  # exactly the documented number of days
        (DAY * 30, policy.PAUSE_AFTER, True),
        (DAY * 30, None, False),  # VIRTUALHOSTS_PAUSE_AFTER_DAYS = 0: never
        (DAY * 2, DAY * 2, True),  # the operator's setting
    ],
)
def test_a_host_is_paused_after_failing_for_the_documented_days(failing_for, pause_after, expected):
    since = None if failing_for is None else NOW - failing_for
    assert policy.should_pause(NOW, since, pause_after) is expected
    assert policy.PAUSE_AFTER == datetime.timedelta(days=7)


def test_the_setting_is_read_in_days(settings):
    from modoboa_pro.virtualhosts import conf

    assert conf.pause_after() == policy.PAUSE_AFTER
    settings.VIRTUALHOSTS_PAUSE_AFTER_DAYS = 3
    assert conf.pause_after() == datetime.timedelta(days=3)
    settings.VIRTUALHOSTS_PAUSE_AFTER_DAYS = 0
    assert conf.pause_after() is None


# -- the CA's pause answer ----------------------------------------------------------


@pytest.mark.parametrize("status", [403, 429])
def test_the_cas_pause_answer_is_recognised_with_its_link(status):
    answer = paused("gone.example.test", status=status)
    code = answer.type.rsplit(":", 1)[-1]
    err = acme._map_problem(
        messages.Error.with_code(code, detail=answer.detail),
        "ordering a certificate for gone.example.test",
    )
    assert isinstance(err, AcmePaused) and not err.retryable and err.retry_after is None
    assert err.unpause_url == LINK
    assert err.message.startswith("Paused by the certificate authority")
    assert f"unpause it at {LINK} and" in err.message


def test_other_refusals_are_not_a_pause():
    limited = acme._map_problem(
        messages.Error.with_code("rateLimited", detail="too many new orders, retry after 1h"),
        "ordering",
    )
    assert isinstance(limited, AcmeRateLimited)
    refused = acme._map_problem(
        messages.Error.with_code("unauthorized", detail="see https://example.test/docs"),
        "ordering",
    )
    assert isinstance(refused, AcmeUnauthorized) and not isinstance(refused, AcmePaused)
    # A link that merely mentions "unpause" in another problem type is not the CA's pause.
    odd = acme._map_problem(messages.Error.with_code("malformed", detail=f"see {LINK}"), "ordering")
    assert not isinstance(odd, AcmePaused)
    assert acme.unpause_url(f"Please visit: {LINK}.") == LINK  # the sentence's dot is not in it


# -- what a failure records ---------------------------------------------------------


@pytest.fixture
def host(db) -> VirtualHost:
    return VirtualHost.objects.create(hostname="gone.example.test")


def dns_failure() -> PreflightDnsFailed:
    return PreflightDnsFailed("Pre-flight (DNS): gone.example.test does not exist (NXDOMAIN).")


def test_the_first_failure_starts_the_streak_and_a_success_ends_it(host):
    recording.mark_failure(host, constants.STEP_ORDER, dns_failure())
    host.refresh_from_db()
    started = host.failing_since
    assert started is not None and host.status == constants.STATUS_FAILED
    recording.mark_failure(host, constants.STEP_ORDER, dns_failure())
    host.refresh_from_db()
    assert host.failing_since == started and host.attempts == 2
    recording.mark_success(host, None, status=constants.STATUS_HTTP_ONLY, threshold_days=30)
    host.refresh_from_db()
    assert host.failing_since is None and host.attempts == 0


def test_failing_for_the_documented_days_pauses_with_a_message_and_an_alarm(host):
    since = timezone.now() - policy.PAUSE_AFTER + datetime.timedelta(hours=1)
    VirtualHost.objects.filter(pk=host.pk).update(attempts=9, failing_since=since)
    host.refresh_from_db()
    recording.mark_failure(host, constants.STEP_ORDER, dns_failure())
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED and host.next_attempt_at is not None

    VirtualHost.objects.filter(pk=host.pk).update(
        failing_since=since - 2 * datetime.timedelta(hours=1)
    )
    host.refresh_from_db()
    recording.mark_failure(host, constants.STEP_ORDER, dns_failure())
    host.refresh_from_db()
    assert host.status == constants.STATUS_PAUSED and host.next_attempt_at is None
    assert host.last_error.startswith("Paused: every run has failed for 7 day(s)")
    assert "Retry provisioning" in host.last_error and "NXDOMAIN" in host.last_error
    [alarm] = open_alarms(host)
    assert alarm.startswith("Virtual host gone.example.test: order failed. Paused: every run")
    assert "NXDOMAIN" in alarm


def test_the_cas_pause_pauses_at_once(host, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    err = acme._map_problem(
        messages.Error.with_code("unauthorized", detail=paused(host.hostname).detail),
        f"ordering a certificate for {host.hostname}",
    )
    run = recording.Run(host, "r1", constants.KIND_PROVISION)
    with recording.outcome(run) as result, run.step(constants.STEP_ORDER):
        raise err
    assert result.status == constants.STATUS_PAUSED
    # The link's token unpauses the account: shown to operators, never in the log files.
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "paused this account" in logged and "jwt=<see the host's last error>" in logged
    assert "eyJ0ZXN0" not in logged
    host.refresh_from_db()
    assert host.status == constants.STATUS_PAUSED and host.attempts == 1
    assert LINK in host.last_error and host.next_attempt_at is None
    assert any(LINK in title for title in open_alarms(host))


def test_a_disable_run_is_never_paused(host, settings):
    settings.VIRTUALHOSTS_PAUSE_AFTER_DAYS = 1
    VirtualHost.objects.filter(pk=host.pk).update(
        enabled=False, attempts=5, failing_since=timezone.now() - 3 * DAY
    )
    host.refresh_from_db()
    recording.mark_failure(host, constants.STEP_REMOVE, dns_failure())
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED

"""What runs record: only observed fields, never a deleted row, the raw detail in the log."""

from __future__ import annotations

import logging

import pytest

from modoboa_pro.virtualhosts import constants, recording
from modoboa_pro.virtualhosts.errors import DesiredStateChanged, StorageError
from modoboa_pro.virtualhosts.models import VirtualHost


@pytest.fixture
def host(db) -> VirtualHost:
    return VirtualHost.objects.bulk_create([VirtualHost(hostname="www.example.test")])[0]


def test_a_failed_step_logs_the_raw_detail_once(host, caplog):
    caplog.set_level(logging.INFO, logger="modoboa.jobs")
    run = recording.Run(host, "r1", constants.KIND_PROVISION)
    with pytest.raises(StorageError), run.step(constants.STEP_STORE):
        raise StorageError("The file is not a PEM certificate.", detail="asn1: bad tag 0x13")
    with pytest.raises(StorageError), run.step(constants.STEP_STORE):
        raise StorageError("The CA said: rate limited.", detail="rate limited")
    failed = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    assert failed[0].endswith("The file is not a PEM certificate. (detail: asn1: bad tag 0x13)")
    assert failed[1].endswith("The CA said: rate limited.")  # already quoted: not repeated
    assert [e.message for e in host.events.all()] == [
        "The CA said: rate limited.",
        "The file is not a PEM certificate.",
    ]


def test_outcomes_never_touch_desired_state_nor_resurrect(host):
    stale = VirtualHost.objects.get(pk=host.pk)
    VirtualHost.objects.filter(pk=host.pk).update(enabled=False)
    recording.mark_failure(stale, constants.STEP_ORDER, StorageError("disk full", retryable=True))
    host.refresh_from_db()
    assert (host.enabled, host.status, host.attempts) == (False, constants.STATUS_FAILED, 1)

    VirtualHost.objects.filter(pk=host.pk).delete()
    recording.mark_success(stale, None, status=constants.STATUS_HTTP_ONLY, threshold_days=30)
    recording.mark_failure(stale, constants.STEP_ORDER, StorageError("disk full"))
    assert not VirtualHost.objects.filter(pk=host.pk).exists()


def test_a_run_stops_at_the_next_step_once_the_host_is_disabled_or_deleted(host):
    run = recording.Run(host, "r1", constants.KIND_PROVISION)
    with run.step(constants.STEP_HTTP_SITE):
        pass
    VirtualHost.objects.filter(pk=host.pk).update(enabled=False)
    with pytest.raises(DesiredStateChanged) as info, run.step(constants.STEP_ACCOUNT):
        pytest.fail("a step of a disabled host must not start")
    assert info.value.gone is False
    VirtualHost.objects.filter(pk=host.pk).delete()
    with pytest.raises(DesiredStateChanged) as info, run.step(constants.STEP_ACCOUNT):
        pytest.fail("a step of a deleted host must not start")
    assert info.value.gone is True


def test_the_running_step_is_shown_while_provisioning_and_cleared_at_the_end(host):
    from modoboa_pro.virtualhosts import presenters

    recording.mark_status(host, constants.STATUS_PROVISIONING)
    run = recording.Run(host, "r1", constants.KIND_PROVISION)
    with run.step(constants.STEP_ORDER):
        shown = VirtualHost.objects.get(pk=host.pk)
        assert presenters.current_step(shown) == constants.STEP_ORDER
    recording.mark_failure(host, constants.STEP_ORDER, StorageError("disk full", retryable=True))
    host.refresh_from_db()
    assert (host.current_step, presenters.current_step(host)) == ("", None)

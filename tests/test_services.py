"""The write rules live in services, whoever calls them (API, CLI, a future UI endpoint)."""

from __future__ import annotations

import datetime
import logging

import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, jobs, queueing, services
from modoboa_pro.virtualhosts.errors import ConfigurationError, DuplicateHost, InvalidHostname
from modoboa_pro.virtualhosts.models import VirtualHost

from .conftest import set_parameters


@pytest.fixture
def letsencrypt(modoboa, redis_server) -> None:
    set_parameters(enable_letsencrypt=True, acme_account_email="hostmaster@example.org")


def test_no_host_without_an_account_email_while_letsencrypt_is_on(modoboa, redis_server):
    set_parameters(enable_letsencrypt=True, acme_account_email="")
    with pytest.raises(ConfigurationError, match="Set the ACME account email"):
        services.create_virtualhost("www.example.test")
    assert not VirtualHost.objects.exists()
    set_parameters(enable_letsencrypt=False)
    assert services.create_virtualhost("www.example.test").hostname == "www.example.test"


def test_a_host_created_disabled_says_so(letsencrypt):
    host = services.create_virtualhost("off.example.test", enabled=False)
    host.refresh_from_db()
    assert (host.enabled, host.status) == (False, constants.STATUS_DISABLED)


def test_names_are_unique_once_normalised(letsencrypt):
    services.create_virtualhost("www.example.test")
    with pytest.raises(DuplicateHost, match="www.example.test already exists"):
        services.create_virtualhost("WWW.Example.Test.")
    with pytest.raises(InvalidHostname):
        services.create_virtualhost("../etc")
    assert VirtualHost.objects.count() == 1


def test_an_admin_change_never_overwrites_what_a_run_recorded(letsencrypt):
    """The admin's copy is stale (loaded before the run finished): only ``enabled`` is saved."""
    host = services.create_virtualhost("www.example.test")
    stale = VirtualHost.objects.get(pk=host.pk)
    VirtualHost.objects.filter(pk=host.pk).update(
        status=constants.STATUS_ACTIVE, cert_serial="5e41a1", attempts=0
    )
    services.set_enabled(stale, False)
    host.refresh_from_db()
    assert host.enabled is False
    assert (host.status, host.cert_serial) == (constants.STATUS_ACTIVE, "5e41a1")


def test_redis_lost_after_the_check_the_sweep_queues_the_work_later(
    modoboa,
    redis_server,
    settings,
    redis_down,
    monkeypatch,
    caplog,
    django_capture_on_commit_callbacks,
):
    caplog.set_level(logging.ERROR, logger="modoboa.jobs")
    working = {q: {"URL": redis_server.url} for q in settings.RQ_QUEUES}
    monkeypatch.setattr(queueing, "ensure_reachable", lambda: None)  # it answered, then died
    with django_capture_on_commit_callbacks(execute=True):
        created = services.create_virtualhost("later.example.test")
    off = VirtualHost.objects.create(hostname="off.example.test", status=constants.STATUS_ACTIVE)
    with django_capture_on_commit_callbacks(execute=True):
        services.set_enabled(off, False)
    assert "saved but not queued" in caplog.text
    settings.RQ_QUEUES = working  # Redis is back

    assert queued() == []
    later = timezone.now() + datetime.timedelta(minutes=5)
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: later)
        retried = jobs.retry_due_virtualhosts()["retried"]
    assert sorted(retried) == ["later.example.test", "off.example.test"]
    assert sorted(queued()) == [
        ("disable_virtualhost", (off.pk,)),
        ("provision_virtualhost", (created.pk,)),
    ]


def queued() -> list[tuple[str, tuple]]:
    import django_rq

    queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
    return [(job.func_name.rsplit(".", 1)[-1], tuple(job.args)) for job in queue.get_jobs()]


def test_find_a_host_by_any_spelling_or_its_legacy_name(letsencrypt):
    host = services.create_virtualhost("bücher.example.test")
    assert services.find_virtualhost("BÜCHER.example.test.") == host
    assert services.find_virtualhost("xn--bcher-kva.example.test") == host
    # A name saved before the rules tightened is found as stored, to be shown or removed.
    VirtualHost.objects.filter(pk=host.pk).update(hostname="ab--cd.example.test")
    assert services.find_virtualhost("ab--cd.example.test") == host
    with pytest.raises(InvalidHostname, match="reserves"):
        services.find_virtualhost("xy--zz.example.test")
    with pytest.raises(VirtualHost.DoesNotExist):
        services.find_virtualhost("other.example.test")

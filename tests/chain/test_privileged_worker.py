"""The privileged (root) worker absent or SIGKILLed: the host names it, nothing is lost.

Real `rqworker privileged` processes, started and killed by PID; the `modoboa` side runs
in this process. A killed worker stays registered in Redis for minutes: the wait must
still see that nobody listens, and say so within seconds, not after the full timeout.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import django_rq
import pytest
from django.utils import timezone

from modoboa_pro.virtualhosts import constants, jobs, queueing, retries, services
from modoboa_pro.virtualhosts.adapters import nginx, reloader, storage, tls
from modoboa_pro.virtualhosts.errors import PrivilegedWorkerMissing
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain, start_privileged_worker, stop_by_pid, work_burst
from .test_renewal import served_serial, stand_in

pytestmark = pytest.mark.chain

GRACE = 2.0  # instead of 15 s: the same path, sooner
NOBODY_LISTENS = "no worker listens on the queue 'privileged'"


@pytest.fixture
def privileged_mode(chain: Chain, settings, monkeypatch) -> None:
    settings.VIRTUALHOSTS_RELOAD_MODE = "privileged"
    settings.VIRTUALHOSTS_RELOAD_TIMEOUT = 60
    monkeypatch.setattr(reloader, "ABSENT_GRACE", GRACE)


@pytest.fixture
def start_worker(chain: Chain, privileged_mode: None) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start real `rqworker privileged` processes; each is stopped by its PID afterwards."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = start_privileged_worker(chain.storage.parent / f"privileged-{len(started)}.log")
        started.append(process)
        wait_for("the worker to listen", lambda: process_listens(process))
        return process

    yield start
    for process in started:
        stop_by_pid(process)


def privileged_queue():
    return django_rq.get_queue(constants.QUEUE_PRIVILEGED)


def process_listens(process: subprocess.Popen) -> bool:
    from rq import Worker

    return any(w.pid == process.pid for w in Worker.all(queue=privileged_queue()))


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_modoboa_queue() -> None:
    """Run the `modoboa` queue only: the privileged one is left to real workers."""
    queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
    work_burst(queue)


def stored_serial(chain: Chain, hostname: str) -> str:
    stored = storage.read_current(chain.storage, hostname)
    assert stored.problem is None and stored.facts is not None, stored.problem
    return stored.facts.serial


def test_no_privileged_worker_at_all_names_it_and_leaves_no_site(
    chain: Chain, privileged_mode: None, start_worker
):
    host = services.create_virtualhost("absent.example.test")
    run_modoboa_queue()
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_HTTP_SITE
    assert NOBODY_LISTENS in host.last_error, host.last_error
    assert "rqworker privileged" in host.last_error
    assert host.next_attempt_at is not None  # retried by the sweep, with back-off
    # nginx -t never ran on the new site, so it was not left in place.
    assert not nginx.site_path(chain.nginx.sites_dir, host.hostname).exists()

    # Once the worker runs, the retry completes the chain.
    start_worker()
    services.retry_provisioning(host)
    run_modoboa_queue()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert served_serial(chain, host.hostname) == stored_serial(chain, host.hostname)


def test_a_killed_privileged_worker_keeps_the_renewed_pair_for_the_next_reload(
    chain: Chain, start_worker
):
    host = stand_in(chain, "killedroot.example.test", remaining=5)
    chain.nginx.reload()
    old = served_serial(chain, host.hostname)
    worker = start_worker()
    worker.send_signal(signal.SIGKILL)  # OOM killer; RQ keeps it registered for minutes
    worker.wait()
    assert process_listens(worker), "the dead worker is still registered"
    assert queueing.listening_workers(privileged_queue()) == []  # yet known dead

    jobs.renew_virtualhost(host.pk)
    run_modoboa_queue()  # the renewal's second half waits for the reload, then gives up
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert NOBODY_LISTENS in host.last_error, host.last_error
    # The new pair is whole on disk and kept (not rolled back: it cost an order); nginx,
    # never reloaded, still serves the old one.
    new = stored_serial(chain, host.hostname)
    assert new != old
    assert served_serial(chain, host.hostname) == old

    # The next successful reload serves it: here the reload job still queued, run by
    # the restarted worker, before any retry.
    start_worker()
    # Done once the job has returned: nginx's old workers (on the old pair) stop accepting
    # only then, about 100 ms after a new one already answers with the new pair.
    finished = privileged_queue().finished_job_registry
    wait_for("the queued reload to run", lambda: len(finished.get_job_ids()) == 1)
    assert served_serial(chain, host.hostname) == new

    # The retry sweep (no operator), once the back-off has passed, records it and does
    # not order again: the kept pair is valid.
    VirtualHost.objects.filter(pk=host.pk).update(next_attempt_at=timezone.now())
    assert retries.run(letsencrypt=True).retried == [host.hostname]
    run_modoboa_queue()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial == new == served_serial(chain, host.hostname)
    assert stored_serial(chain, host.hostname) == new
    last_order = host.events.filter(step=constants.STEP_ORDER).order_by("-pk").first()
    assert last_order is not None and last_order.outcome == constants.OUTCOME_SKIPPED
    pem = tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, host.hostname)
    assert pem.serial == new


def test_a_reload_queued_but_never_run_says_which_workers_listen(
    chain: Chain, privileged_mode: None, settings, redis_server
):
    """A live worker registered on the queue that never runs the job (busy, stuck)."""
    settings.VIRTUALHOSTS_RELOAD_TIMEOUT = 3
    rl = jobs.build_reloader()
    rl.listeners = lambda: ["stuck-worker-1"]
    with pytest.raises(PrivilegedWorkerMissing) as caught:
        rl()
    assert "stuck-worker-1" in caught.value.message
    assert "within 3 s" in caught.value.message
    assert privileged_queue().count >= 1  # the job waits there for whoever comes
    privileged_queue().empty()

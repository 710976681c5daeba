"""Redis restarted during the renewal scan, during a burst of provisioning, and mid-run.

The session's real redis-server is stopped by its PID and started again on the same
socket, as `systemctl restart redis-server` or a crash and a supervisor would. Without
persistence (the harness's default, and the worst case: a crash loses what a snapshot
had not saved) every queued job, lock and reload request is gone; with Redis's default
snapshots (Debian's redis-server) a clean restart keeps them. Nothing here sleeps for the
retry sweep: its clock is moved with ``retries.run(now=...)``.
"""

from __future__ import annotations

import datetime
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import django_rq
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rq import Worker
from rq.job import JobStatus

from modoboa_pro.testing import ManagedProcess
from modoboa_pro.virtualhosts import (
    conf,
    constants,
    health,
    jobs,
    policy,
    queueing,
    retries,
    services,
)
from modoboa_pro.virtualhosts import scan as scan_module
from modoboa_pro.virtualhosts.adapters import locks, nginx, reloader, storage, webroot
from modoboa_pro.virtualhosts.errors import RunInProgress
from modoboa_pro.virtualhosts.models import RenewalScan, VirtualHost

from ..conftest import REPO, Chain
from .test_privileged_worker import run_modoboa_queue
from .test_renewal import queued_renewals, reload_count, served_serial, stand_in

pytestmark = pytest.mark.chain

LOST_AND_QUEUED_AGAIN = "Redis restarted during the scan"
INTERRUPTED = "interrupted: Redis unreachable"


@pytest.fixture(autouse=True)
def _redis_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test left, the next one finds the session's Redis running."""
    yield
    if "redis_server" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        if not server.running:
            server.start()


def restart_redis(chain: Chain) -> None:
    """Stop redis-server by its PID (SIGTERM, as systemd does) and start it on the same socket."""
    chain.redis.stop()
    chain.redis.start()


def during_the_scan(monkeypatch, actions: dict[int, Callable[[], None]]) -> None:
    """Fault seam: run ``actions[n]`` when the scan reaches its n-th host (1-based)."""
    read = scan_module.pair_reader.PairReader.read  # the scan reads each host's pair with it
    seen = iter(range(1, 10_000))

    def reading(*args, **kwargs):
        action = actions.get(next(seen))
        if action is not None:
            action()
        return read(*args, **kwargs)

    monkeypatch.setattr(scan_module.pair_reader.PairReader, "read", reading)


def due_hosts(chain: Chain, prefix: str, count: int) -> tuple[list[VirtualHost], dict[str, str]]:
    """``count`` hosts served by nginx with a certificate due for renewal, and their serials."""
    # 25 of 90 days left: due for 5 days (overdue), not yet close to expiry (under 15 days).
    hosts = [stand_in(chain, f"{prefix}{i:02d}.example.test", remaining=25) for i in range(count)]
    chain.nginx.reload()
    return hosts, {h.hostname: served_serial(chain, h.hostname) for h in hosts}


def stored_serial(chain: Chain, hostname: str) -> str:
    stored = storage.read_current(chain.storage, hostname)
    assert stored.problem is None and stored.facts is not None, stored.problem
    return stored.facts.serial


def assert_renewed_once_and_served(chain: Chain, hosts, before: dict[str, str]) -> None:
    """Active, a new certificate nginx serves from the stored pair, and a single order."""
    for host in hosts:
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, (host.hostname, host.last_error)
        assert host.cert_serial != before[host.hostname]
        assert served_serial(chain, host.hostname) == stored_serial(chain, host.hostname)
        assert stored_serial(chain, host.hostname) == host.cert_serial
        orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
        assert orders.count() == 1, host.hostname


def queue_ids(hosts) -> list[str]:
    return [f"virtualhosts-renew-{h.pk}" for h in hosts]


def health_line() -> health.Health:
    return health.assess(health.collect(VirtualHost.objects.all(), 30))


def interrupted_scan_shown() -> bool:
    return "interrupted" in health_line().text


def lock_keys(chain: Chain) -> list[bytes]:
    return chain.redis.client().keys(locks.LOCK_KEY_PREFIX + "*")


# -- the daily scan ---------------------------------------------------------------------------


def test_redis_restarted_mid_scan_the_lost_renewals_are_queued_again(chain: Chain, monkeypatch):
    """Redis goes down at the 5th of 12 due hosts and is back at the 9th: the 4 renewals queued
    before are lost with it, 4 cannot be queued while it is down; the scan ends with all 12
    queued, once each, and says what happened."""
    hosts, before = due_hosts(chain, "rescan", 12)
    during_the_scan(monkeypatch, {5: chain.redis.stop, 9: chain.redis.start})

    result = jobs.check_certificate_renewals()

    names = [h.hostname for h in hosts]
    assert sorted(result["enqueued"]) == names and result["not_queued"] == []
    assert result["requeued"] == names[:4]
    assert queued_renewals() == sorted(queue_ids(hosts))  # 12 jobs, one per host
    scan = RenewalScan.objects.get()
    assert (scan.due, scan.enqueued, scan.not_queued) == (12, 12, 0)
    assert f"{LOST_AND_QUEUED_AGAIN}: 4 renewal(s) queued before were lost" in scan.summary
    assert "rescan00.example.test" in scan.summary and INTERRUPTED not in scan.summary
    assert not interrupted_scan_shown()

    chain.drain()
    assert chain.failed_jobs() == []
    assert_renewed_once_and_served(chain, hosts, before)


def test_redis_down_until_after_the_scan_it_is_recorded_and_the_next_scan_renews(
    chain: Chain, monkeypatch
):
    """Redis dies while the scan queues the 3rd of 6 renewals (its enqueue lock just taken) and
    is not back before the scan ends: the scan does not crash, its row and the health line say
    it was interrupted; once Redis is back, the next scan queues everything still due."""
    hosts, before = due_hosts(chain, "downscan", 6)
    take = locks.HostLock.acquire
    enqueue_locks = iter(range(1, 100))

    def acquire_then_redis_dies(lock: locks.HostLock) -> None:
        take(lock)
        if lock.name.startswith("enqueue:") and next(enqueue_locks) == 3:
            chain.redis.stop()

    monkeypatch.setattr(locks.HostLock, "acquire", acquire_then_redis_dies)
    result = jobs.check_certificate_renewals()
    monkeypatch.undo()

    names = [h.hostname for h in hosts]
    assert result["enqueued"] == names[:2] and result["not_queued"] == names[2:]
    assert result["retried"] == []
    scan = RenewalScan.objects.get()
    assert scan.not_queued == 4 and scan.finished_at is not None
    assert f"{INTERRUPTED}, 4 due renewal(s) not queued (downscan02.example.test" in scan.summary
    assert "run `virtualhosts scan` once Redis is back" in scan.summary
    # Shown before the hosts' own state (their certificates are overdue, a lesser warning).
    assert health_line() == health.Health(
        health.WARNING, "Renewal scan interrupted: 4 renewals not queued"
    )

    # The operator runs the scan by hand while Redis is still down: it says so, exit 1.
    with pytest.raises(CommandError) as refused:
        call_command("virtualhosts", "scan", stdout=io.StringIO())
    assert refused.value.returncode == 1
    assert "6 due renewal(s) not queued, Redis is unreachable" in str(refused.value)

    chain.redis.start()  # empty: the two renewals queued before are gone too
    assert queued_renewals() == []
    result = jobs.check_certificate_renewals()  # the next night, or `virtualhosts scan`
    assert sorted(result["enqueued"]) == names
    assert RenewalScan.objects.latest().not_queued == 0
    assert not interrupted_scan_shown()
    chain.drain()
    assert_renewed_once_and_served(chain, hosts, before)


@pytest.fixture
def persistent_redis(chain: Chain) -> Iterator[None]:
    """The session's Redis with Redis's default snapshots, as Debian runs it; put back after."""
    chain.redis.persistent = True
    restart_redis(chain)
    yield
    chain.redis.persistent = False
    restart_redis(chain)  # starts empty: the snapshot is removed


def test_a_clean_restart_of_a_persistent_redis_mid_scan_loses_nothing(
    chain: Chain, monkeypatch, persistent_redis
):
    """Debian's redis-server restarted cleanly (`systemctl restart`) while the scan runs: the
    queued renewals come back from the snapshot, and the scan's second look (Redis's run id
    changed) finds them all still queued: nothing is queued twice."""
    hosts, before = due_hosts(chain, "rdbscan", 6)
    during_the_scan(monkeypatch, {4: lambda: restart_redis(chain)})
    result = jobs.check_certificate_renewals()

    assert sorted(result["enqueued"]) == [h.hostname for h in hosts]
    assert result["requeued"] == []
    assert chain.redis.dump_path.exists()  # saved at shutdown, loaded at start
    scan = RenewalScan.objects.get()
    assert scan.not_queued == 0 and LOST_AND_QUEUED_AGAIN not in scan.summary  # none lost
    assert queued_renewals() == sorted(queue_ids(hosts))
    chain.drain()
    assert_renewed_once_and_served(chain, hosts, before)


# -- a burst of provisioning on real workers --------------------------------------------------


class RqWorker(ManagedProcess):
    """A real `manage.py rqworker QUEUE` on the test database, pointed at the chain's servers."""

    start_timeout = 60.0

    def __init__(self, workdir: Path, queue: str, settings: Path) -> None:
        self.name = f"rqworker-{queue}"
        super().__init__(workdir)
        self.queue = queue
        self.settings = settings  # a module file

    def command(self) -> list[str]:
        return [sys.executable, "-m", "django", "rqworker", self.queue]

    def environment(self) -> dict[str, str]:
        return dict(
            os.environ,
            DJANGO_SETTINGS_MODULE=self.settings.stem,
            PYTHONPATH=os.pathsep.join([str(REPO), str(self.settings.parent)]),
            PYTHONUNBUFFERED="1",
        )

    def ready(self) -> bool:
        queue = django_rq.get_queue(self.queue)
        return any(w.pid == self.pid for w in Worker.all(queue=queue))


def worker_settings(directory: Path) -> Path:
    """A settings module for worker processes: the test database and this test's settings."""
    lines = ["from tests.settings_subprocess import *  # noqa: F403"]
    lines += [
        f"{name} = {getattr(django_settings, name)!r}"
        for name in conf.DEFAULTS
        if hasattr(django_settings, name)
    ]
    module = directory / "redis_restart_settings.py"
    module.write_text("\n".join(lines) + "\n")
    return module


@pytest.fixture
def start_worker(chain: Chain, settings, tmp_path: Path) -> Iterator[Callable[[str], RqWorker]]:
    """Start real `rqworker` processes (privileged reloads, as deployed); stopped by PID after."""
    settings.VIRTUALHOSTS_RELOAD_MODE = "privileged"
    module = worker_settings(tmp_path)
    started: list[RqWorker] = []

    def start(queue: str) -> RqWorker:
        worker = RqWorker(tmp_path / f"{queue}-{len(started)}", queue, module)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float,
    workers=(),
    detail: Callable[[], str] = str,
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    logs = "\n".join(w.log_tails() for w in workers)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}\n{logs}")


BURST = 20


@pytest.fixture
def slow_reloads(chain: Chain, settings) -> None:
    """Every nginx reload takes a second more (a busy machine): the workers started after
    this fixture reload through a shell that sleeps first."""
    settings.VIRTUALHOSTS_NGINX_RELOAD_COMMAND = [
        "sh", "-c", 'sleep 1; exec "$@"', "slow-reload", *chain.nginx.reload_command
    ]  # fmt: skip


def test_a_burst_of_provisioning_survives_a_redis_restart(
    chain: Chain, slow_reloads: None, start_worker
):
    """20 hosts created at once; the `modoboa` worker provisions them, each new host's run
    queueing its follow-ups behind the others. Redis restarts while a run waits for its nginx
    reload: that run asks again and ends active, or fails with a retryable reason; the jobs
    still queued vanish (first runs and follow-ups: their hosts stay pending or provisioning).
    The retry sweep queues every one of them again, once; all 20 end active, nginx serving
    their stored pair; no lock is left."""
    privileged = start_worker(constants.QUEUE_PRIVILEGED)
    worker = start_worker(constants.QUEUE_DEFAULT)
    hosts = [services.create_virtualhost(f"rburst{i:02d}.example.test") for i in range(BURST)]
    ids = [h.pk for h in hosts]
    burst = VirtualHost.objects.filter(pk__in=ids)

    def waiting_for_its_reload() -> VirtualHost | None:
        # A new host's last job (its HTTPS site's follow-up) running: it waits for the reload.
        for host in burst.filter(status=constants.STATUS_PROVISIONING):
            job = queueing.pending_job(queueing.FINISH_PROVISIONING, host.pk)
            if job is not None and job.get_status() == JobStatus.STARTED:
                return host
        return None

    in_flight = wait_for("a run waiting for its reload", waiting_for_its_reload, 60, [worker])
    assert isinstance(in_flight, VirtualHost)
    restart_redis(chain)
    assert django_rq.get_queue(constants.QUEUE_DEFAULT).count == 0  # the queued jobs are gone

    def interrupted_run_ended() -> bool:
        host = burst.get(pk=in_flight.pk)
        # Failed or active; or its worker died with Redis (the sweep resumes the host).
        return host.status != constants.STATUS_PROVISIONING or not worker.running

    # The interrupted run records a reason and a retry time, never "internal error".
    wait_for("the interrupted run to end", interrupted_run_ended, 30, [worker])
    in_flight.refresh_from_db()
    print(f"interrupted run: {in_flight.hostname} {in_flight.status}: {in_flight.last_error}")
    if in_flight.status == constants.STATUS_FAILED:
        assert "Redis" in in_flight.last_error, in_flight.last_error
        assert "Internal error" not in in_flight.last_error
        assert in_flight.next_attempt_at is not None
    elif in_flight.status == constants.STATUS_PROVISIONING:  # its worker died with Redis
        assert "Internal error" not in in_flight.last_error
    else:  # it asked for its reload again, or was answered just before the restart
        assert in_flight.status == constants.STATUS_ACTIVE, in_flight.last_error
    # Not active and nothing queued for them: the jobs lost with Redis (first runs and
    # follow-ups alike), and a run whose worker died with it.
    left = sorted(
        h.hostname
        for h in burst.exclude(status=constants.STATUS_ACTIVE)
        if not queueing.is_busy(h.pk, h.hostname)
    )
    assert len(left) > BURST // 2

    # The sweep, 3 minutes on (every 5 minutes from cron): what vanished is queued once.
    later = timezone.now() + policy.ORPHANED_RUN_AFTER + datetime.timedelta(seconds=5)
    assert sorted(retries.run(letsencrypt=True, now=later).retried) == left
    assert retries.run(letsencrypt=True, now=later).retried == []  # not twice

    def all_active() -> bool:
        # RQ's worker exits when Redis fails under a job it runs (the privileged one does, in
        # the reload it ran at the restart): supervisor starts it again.
        nonlocal worker, privileged
        if not worker.running:
            print(f"the modoboa worker (pid {worker.pid}) exited; starting another")
            worker = start_worker(constants.QUEUE_DEFAULT)
        if not privileged.running:
            print(f"the privileged worker (pid {privileged.pid}) exited; starting another")
            privileged = start_worker(constants.QUEUE_PRIVILEGED)
        return burst.filter(status=constants.STATUS_ACTIVE).count() == BURST

    def not_active() -> str:
        rows = burst.exclude(status=constants.STATUS_ACTIVE).values_list(
            "hostname", "status", "current_step", "attempts", "next_attempt_at", "last_error"
        )
        return "hosts not active: " + "; ".join(" ".join(map(str, row)) for row in rows)

    started = time.monotonic()
    wait_for("every host to be active", all_active, 120, [worker, privileged], detail=not_active)
    took = time.monotonic() - started
    print(f"{len(left)} hosts resumed by the sweep, all active {took:.0f} s later")
    for host in burst:
        assert served_serial(chain, host.hostname) == stored_serial(chain, host.hostname)
        assert stored_serial(chain, host.hostname) == host.cert_serial
        orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
        assert orders.count() == 1, host.hostname
        ledger = webroot.TokenLedger(chain.storage / constants.CHALLENGES_DIRNAME, host.hostname)
        assert ledger.tokens() == []
    sites = sorted(p.name for p in chain.nginx.sites_dir.glob("rburst*.conf"))
    assert sites == sorted(f"{h.hostname}.conf" for h in hosts)  # one each, none lost
    assert lock_keys(chain) == []


# -- two runs on one host once the locks are gone ---------------------------------------------


def test_a_second_run_after_the_locks_vanished_does_no_harm(chain: Chain, monkeypatch):
    """Run A holds the host, about to order; Redis restarts and its lock is gone, so Retry is
    accepted and run B (another worker) provisions the host. A then orders too: one extra
    certificate, but each pair is switched whole, and the host ends active with nginx serving
    the pair on disk."""
    host = VirtualHost.objects.create(hostname="twice.example.test")
    django_rq.get_queue(constants.QUEUE_DEFAULT).empty()  # A is started by hand below
    check = storage.check_writable
    a_waits, a_goes = threading.Event(), threading.Event()

    def a_pauses_before_ordering(root: Path, hostname: str) -> None:
        if threading.current_thread().name == "run-a":
            a_waits.set()
            assert a_goes.wait(60)
        check(root, hostname)

    monkeypatch.setattr(storage, "check_writable", a_pauses_before_ordering)
    outcome: dict[str, str] = {}

    def run_a() -> None:
        try:
            # A new host's run writes its site and goes on in a follow-up job: A runs both.
            assert jobs.provision_virtualhost(host.pk) == constants.STATUS_PROVISIONING
            queue = django_rq.get_queue(constants.QUEUE_DEFAULT)
            follow_up = queue.fetch_job(queueing.job_id(queueing.AFTER_HTTP_SITE, host.pk))
            assert follow_up is not None
            queue.remove(follow_up)
            outcome["a"] = jobs.provision_after_http_site(*follow_up.args)
        finally:
            connection.close()

    a = threading.Thread(target=run_a, name="run-a")
    a.start()
    try:
        assert a_waits.wait(30)
        with pytest.raises(RunInProgress):  # A's lock protects the host...
            services.retry_provisioning(host)
        restart_redis(chain)
        assert lock_keys(chain) == []  # ...until Redis forgets it
        services.retry_provisioning(host)  # accepted: nothing says A is alive
        chain.drain()  # run B, start to finish
        host.refresh_from_db()
        assert host.status == constants.STATUS_ACTIVE, host.last_error
        b_serial = host.cert_serial
    finally:
        a_goes.set()
        a.join(60)
    assert outcome["a"] == constants.STATUS_ACTIVE

    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != b_serial  # A's certificate, stored after B's
    assert served_serial(chain, host.hostname) == stored_serial(chain, host.hostname)
    assert stored_serial(chain, host.hostname) == host.cert_serial
    orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
    assert orders.count() == 2  # the cost of the lost lock: one extra certificate
    assert nginx.site_path(chain.nginx.sites_dir, host.hostname).exists()
    assert lock_keys(chain) == []


# -- a run waiting for its nginx reload -------------------------------------------------------


def in_thread(func: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    """Run ``func`` in a thread; its result or exception lands in the returned dict."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = func()
        except Exception as err:  # noqa: BLE001 - handed to the test
            out["error"] = err
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def reload_job_queued() -> bool:
    return django_rq.get_queue(constants.QUEUE_PRIVILEGED).count > 0


def waiting_for_its_reload(chain: Chain) -> Callable[[], bool]:
    """A run waits for its reload: its job is queued and the run listens for the notice (a
    lone change queues the job with its request, before the run reaches its wait)."""
    client = chain.redis.client()
    channel = reloader.ReloadBook(client).finished

    def waiting() -> bool:
        return reload_job_queued() and client.pubsub_numsub(channel)[0][1] > 0

    return waiting


def test_a_reload_request_redis_forgot_is_asked_again(chain: Chain, start_worker, settings):
    """Redis forgets the reload book while a run waits (a restart its client retried through
    unnoticed, here FLUSHDB): the run asks again instead of waiting for a reload that would
    never cover its request (it failed after 15 s with "no worker listens" before)."""
    settings.VIRTUALHOSTS_RELOAD_TIMEOUT = 30
    reload = jobs.build_reloader()
    thread, out = in_thread(reload)
    wait_for("the run waiting for its reload", waiting_for_its_reload(chain), 10)
    chain.redis.client().flushdb()
    start_worker(constants.QUEUE_PRIVILEGED)
    thread.join(30)
    assert "error" not in out, out
    assert django_rq.get_queue(constants.QUEUE_PRIVILEGED).count == 0


def test_a_renewal_that_loses_redis_waiting_for_its_reload_keeps_its_pair(
    chain: Chain, start_worker
):
    """The privileged reload is asked for, Redis stops before it is answered: the renewal
    fails with a reason saying so and a retry time; its new pair is kept whole (it cost an
    order), nginx still serves the old one. Once Redis and the workers are back, the sweep's
    retry reloads nginx, which serves the new pair, without ordering again."""
    host = stand_in(chain, "rdb-lost.example.test", remaining=5)
    chain.nginx.reload()
    old = served_serial(chain, host.hostname)
    assert jobs.renew_virtualhost(host.pk) == constants.STATUS_PROVISIONING  # reload deferred
    finish = django_rq.get_queue(constants.QUEUE_DEFAULT).fetch_job(
        f"virtualhosts-finish-{host.pk}"
    )
    assert finish is not None
    args = finish.args
    finish.delete()
    thread, out = in_thread(lambda: jobs.finish_renewal(*args))  # as the worker would
    wait_for("the run waiting for its reload", waiting_for_its_reload(chain), 10)
    chain.redis.stop()
    thread.join(30)
    assert out.get("result") == constants.STATUS_FAILED, out

    host.refresh_from_db()
    assert host.failed_step == constants.STEP_HTTPS_SITE
    assert "whether nginx reloaded is not known" in host.last_error, host.last_error
    assert host.next_attempt_at is not None
    new = stored_serial(chain, host.hostname)
    assert new != old and served_serial(chain, host.hostname) == old

    chain.redis.start()
    start_worker(constants.QUEUE_PRIVILEGED)
    later = timezone.now() + datetime.timedelta(minutes=2)
    assert retries.run(letsencrypt=True, now=later).retried == [host.hostname]
    run_modoboa_queue()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial == new == served_serial(chain, host.hostname)
    orders = host.events.filter(step=constants.STEP_ORDER, outcome=constants.OUTCOME_OK)
    assert orders.count() == 1


def test_local_reloads_go_on_without_redis(chain: Chain):
    """Local mode (the worker runs nginx itself): a reload waiting on another process's
    reload when Redis stops does its own, uncoordinated, instead of failing the run."""
    book = reloader.ReloadBook(chain.redis.client())
    assert book.acquire_running(60) is not None  # another process is reloading
    offset = chain.nginx.error_log_path.stat().st_size
    thread, out = in_thread(jobs.build_reloader())
    time.sleep(0.3)  # waiting for the other process's outcome
    chain.redis.stop()
    thread.join(30)
    chain.redis.start()
    assert "error" not in out, out
    assert reload_count(chain, offset) == 1


def test_the_retry_sweep_stops_in_one_line_while_redis_is_down(db, redis_down, caplog):
    """What the daily scan's own call of the sweep meets when Redis is still down."""
    VirtualHost.objects.bulk_create(
        [
            VirtualHost(hostname=f"stuck{i}.example.test", status=constants.STATUS_PENDING)
            for i in range(3)
        ]
    )
    later = timezone.now() + policy.ORPHANED_RUN_AFTER * 2
    report = retries.run(letsencrypt=True, now=later)
    assert report.retried == [] and report.busy == []
    assert report.stopped.startswith("Cannot reach Redis"), report.stopped
    assert "The next sweep retries." in report.summary()
    stops = [r for r in caplog.records if "retries stopped" in r.getMessage()]
    assert len(stops) == 1  # one line, not one per host


def test_a_reload_that_began_before_a_restart_answers_no_request_made_after_it(chain: Chain):
    """A reload read generation N, then Redis restarted without persistence: requests start
    again from 1. Its outcome, published as covering N, would tell those new requests that
    nginx was reloaded for them when it never read their files (hosts then fail their
    challenge pre-check with a 404). It is dropped instead, and a new reload serves them."""
    book = reloader.ReloadBook(chain.redis.client())
    for _ in range(5):
        book.request()
    covers, token = book.begin(60)
    assert covers == 5

    restart_redis(chain)
    book = reloader.ReloadBook(chain.redis.client())
    generation = book.request()
    assert generation == 1

    assert book.finish(covers, {"ok": True, "output": ""}, token) is False
    assert book.covering_outcome(generation) is None
    assert not book.pending()  # so the waiter queues a reload of its own

    # A reload that began after the restart answers it.
    covers, token = book.begin(60)
    assert book.finish(covers, {"ok": True, "output": ""}, token) is True
    assert book.covering_outcome(generation) == {"ok": True, "output": ""}

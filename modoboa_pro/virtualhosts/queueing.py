"""Enqueueing, in one place: job paths and ids, "is one pending", enqueue once, timeouts.

Jobs are enqueued by dotted path, so nothing below ``jobs`` imports it. Every
job about a host has a stable id per action (``virtualhosts-<action>-<id>``),
and ``enqueue_once`` never queues a second one while the first is pending,
whoever asks (API, CLI, handlers, the scan, two schedulers at once).
"""

from __future__ import annotations

import datetime
import logging

import django_rq
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job
from rq.worker import Worker

from . import constants
from .adapters import locks
from .errors import LockHeld, LockUnavailable, QueueUnavailable

logger = logging.getLogger("modoboa.jobs")

_JOBS = "modoboa_pro.virtualhosts.jobs."
PROVISION = _JOBS + "provision_virtualhost"
RENEW = _JOBS + "renew_virtualhost"
FINISH_RENEWAL = _JOBS + "finish_renewal"
# A new host's provisioning, after the shared reload of its HTTP-only / HTTPS site.
AFTER_HTTP_SITE = _JOBS + "provision_after_http_site"
FINISH_PROVISIONING = _JOBS + "finish_provisioning"
DISABLE = _JOBS + "disable_virtualhost"
REMOVE = _JOBS + "remove_virtualhost"
RELOAD = _JOBS + "nginx_test_and_reload"
MAIL_DEPLOY = _JOBS + "mail_deploy"
SCAN = _JOBS + "check_certificate_renewals"

# The action part of a job id: one per job that acts on a host.
ACTIONS = {
    PROVISION: "provision",
    RENEW: "renew",
    FINISH_RENEWAL: "finish",
    AFTER_HTTP_SITE: "after-http-site",
    FINISH_PROVISIONING: "finish-first",
    DISABLE: "disable",
    REMOVE: "remove",
}
# Jobs that mean "a run is queued or running for this host".
RUN_JOBS = (PROVISION, RENEW, FINISH_RENEWAL, AFTER_HTTP_SITE, FINISH_PROVISIONING)

# One timeout for every chain job, a kill limit above any legitimate run. A run
# waits for the CA (ACME_ORDER_TIMEOUT, 90 s by default) and for the privileged
# worker's reload (VIRTUALHOSTS_RELOAD_TIMEOUT, 120 s); disable and remove first wait
# for the run in progress, at most the host lock's lifetime (HOST_LOCK_TTL, 15 min).
# RQ's default 180 s would kill healthy runs.
CHAIN_JOB_TIMEOUT = int(constants.HOST_LOCK_TTL.total_seconds()) + 300

# RQ job states in which a job will still run (or is running): enqueueing again would
# be a duplicate.
PENDING_STATES = frozenset(
    {"created", "queued", "started", "deferred", "scheduled", "rate_limited"}
)

# Serialises "is one queued? if not, enqueue one" for one host and action across
# processes; a check-and-enqueue takes milliseconds.
ENQUEUE_LOCK_TTL = datetime.timedelta(seconds=30)


def queue():
    return django_rq.get_queue(constants.QUEUE_DEFAULT)


def runs_queued(connection: Redis | None = None) -> bool:
    """Whether jobs wait in the default queue (``connection``: the caller's to Redis): a
    burst, whose runs' changes will share the next nginx reload."""
    q = django_rq.get_queue(constants.QUEUE_DEFAULT, connection=connection)
    return q.count > 0


def ensure_reachable() -> None:
    """Raise QueueUnavailable unless Redis answers: checked before a change is saved, so
    that a change whose job could not be queued is never saved (nothing half-done)."""
    try:
        queue().connection.ping()
    except RedisError as err:
        raise QueueUnavailable(
            f"Cannot reach Redis, where Modoboa's workers take their jobs ({err}). Nothing "
            "was changed: start Redis (e.g. systemctl start redis-server), then try again."
        ) from err


def server_epoch() -> str | None:
    """The running Redis server's id, new at every start; None when Redis cannot be reached.

    A different id means Redis restarted: without persistence, every job queued before
    (and every lock) is gone.
    """
    try:
        return str(queue().connection.info("server")["run_id"])
    except (RedisError, KeyError):
        return None


def _unreachable(what: str, err: Exception) -> QueueUnavailable:
    reason = err.__cause__ if isinstance(err, LockUnavailable) and err.__cause__ else err
    return QueueUnavailable(f"Cannot reach Redis to {what} ({reason}).")


def job_id(path: str, host_id: int) -> str:
    """The stable RQ job id of ``path`` for one host (only [A-Za-z0-9_-], as RQ requires)."""
    return f"virtualhosts-{ACTIONS[path]}-{int(host_id)}"


def job_state(job: Job) -> str:
    """The job's RQ status as plain text ("queued", "failed"...)."""
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status))


def abandoned(job: Job) -> bool:
    """A job RQ still calls "started" whose worker is gone (SIGKILL, OOM, reboot).

    RQ notices only when the worker's heartbeat times out, minutes later; until then
    the job would block its host. The worker's own record says where it ran.
    """
    if job_state(job) != "started" or not job.worker_name:
        return False
    worker = Worker.find_by_key(
        Worker.redis_worker_namespace_prefix + job.worker_name, connection=job.connection
    )
    if worker is None:
        return True  # its record is gone: it stopped, and the job with it
    return locks.process_gone(worker.hostname, worker.pid)


def listening_workers(q) -> list[str]:
    """Names of the workers listening on queue ``q``, but for those known to be dead.

    A SIGKILLed worker stays registered until its record expires (minutes); one of this
    machine whose process is gone is not listening.
    """
    return [w.name for w in Worker.all(queue=q) if not locks.process_gone(w.hostname, w.pid)]


def _pending(job: Job) -> bool:
    if job_state(job) not in PENDING_STATES:
        return False
    if abandoned(job):
        logger.warning(
            "job %s: its worker %s died while running it; the host is free again",
            job.id,
            job.worker_name,
        )
        return False
    return True


def pending_job(path: str, host_id: int) -> Job | None:
    """The queued or running job ``path`` for this host, if any (not one of a dead worker)."""
    try:
        job = Job.fetch(job_id(path, host_id), connection=queue().connection)
    except NoSuchJobError:
        return None
    return job if _pending(job) else None


def is_busy(host_id: int, hostname: str) -> bool:
    """True while a provisioning or renewal run is queued, running, or holds the host.

    Raises QueueUnavailable when Redis cannot be reached.
    """
    try:
        return locks.is_locked(queue().connection, hostname) or any(
            pending_job(path, host_id) is not None for path in RUN_JOBS
        )
    except (RedisError, LockUnavailable) as err:
        raise _unreachable(f"see whether a run for {hostname} is queued", err) from err


def enqueue_once(path: str, host_id: int, *args: object, description: str = "") -> bool:
    """Enqueue ``path(*args)`` as this host's job unless one is queued or running.

    Atomic across processes: a short Redis lock per host and action serialises
    the check and the enqueue, and RQ's ``unique=True`` refuses a second job
    with the same id anyway. A finished job's id is reused; a failed job with
    the same arguments is requeued, so RQ keeps its traceback. Returns True
    when this call enqueued; raises QueueUnavailable when Redis cannot be reached.
    """
    q = queue()
    connection = q.connection
    jid = job_id(path, host_id)
    try:
        with locks.HostLock(connection, f"enqueue:{jid}", ENQUEUE_LOCK_TTL):
            try:
                job: Job | None = Job.fetch(jid, connection=connection)
            except NoSuchJobError:
                job = None
            if job is not None:
                state = job_state(job)
                if _pending(job):
                    return False
                if state == "failed" and tuple(job.args) == args:
                    q.failed_job_registry.requeue(job)
                    return True
                job.delete()
            q.enqueue(
                path,
                *args,
                job_id=jid,
                unique=True,
                job_timeout=CHAIN_JOB_TIMEOUT,
                description=description or f"{ACTIONS[path]} virtual host #{host_id}",
            )
            return True
    except (LockHeld, DuplicateJobError):
        return False
    except (RedisError, LockUnavailable) as err:
        raise _unreachable(f"queue the job {jid}", err) from err

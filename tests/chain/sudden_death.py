"""A `modoboa` worker that SIGKILLs itself at one point of the chain (run in a child process).

``python -m tests.chain.sudden_death POINT HOSTNAME`` sets Django up with the test settings
(plus the overrides of the parent test, in ``SETTINGS_ENV``), wraps one seam function so that
the process kills itself at POINT, then works the ``modoboa`` queue like a real worker. The
death is real: no exception, no ``finally``, no cleanup; locks, RQ's records and files stay
as they were. The child exits with ``NOT_REACHED`` if the chain never got there.

``python -m tests.chain.sudden_death --serve`` does the same for many points at a lower
cost: it sets Django up once, then for each request line on stdin (JSON: point, hostname,
settings, log) forks a child that arms itself and works the queue, and answers with the
child's PID, then its exit code (``-9`` when it killed itself), one JSON line each. Setting
Django and Modoboa up took most of each death's time; the forked child dies just as really.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

SETTINGS_ENV = "MODOBOA_PRO_TEST_SETTINGS"
NOT_REACHED = 3

# A point: what the chain has just done (or is about to do) when the process dies.
PROVISIONING_POINTS = (
    "http_site_written",  # the HTTP-only site file is written, nginx not reloaded
    "http_site_deferred",  # ... and the rest of the run queued behind the shared reload
    "http_site_probe",  # nginx reloaded, the preflight's probe token is in the webroot
    "http_site_served",  # the http_site step is recorded
    "order",  # the challenge token is published, the CA not yet told
    "certificate_issued",  # the CA issued the certificate; nothing stored
    "key_written",  # the new private key is in its version directory, the chain not yet
    "chain_written",  # both files are written, certs/<host> still points at the old pair
    "pair_swapped",  # certs/<host> points at the new pair; older versions not pruned
    "https_site_written",  # the HTTPS site file is written, nginx not tested or reloaded
    "https_site_deferred",  # ... and the end of the run queued behind the shared reload
    "reload_tested",  # `nginx -t` passed with the HTTPS site, the reload not sent
    "reloaded",  # the reload was sent, the served certificate not yet verified
    "verified",  # nginx serves the new pair, the success not yet recorded
)
# A renewal's site is already the HTTPS one: it writes no site file; its reload is the
# finish job's, queued behind the other renewals.
RENEWAL_POINTS = (
    "http_site_probe",
    "http_site_served",
    "order",
    "certificate_issued",
    "key_written",
    "chain_written",
    "pair_swapped",
    "finish_queued",  # the finish job is queued, the renewal job not finished
    "reload_tested",
    "reloaded",
    "verified",
)


def die() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL cannot be caught")


def _wrap(owner: object, name: str, *, before: bool, when: Callable[..., bool]) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before and when(*args, **kwargs):
            die()
        result = original(*args, **kwargs)
        if not before and when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def _always(*args: Any, **kwargs: Any) -> bool:
    return True


def before(owner: object, name: str, when: Callable[..., bool] = _always) -> None:
    _wrap(owner, name, before=True, when=when)


def after(owner: object, name: str, when: Callable[..., bool] = _always) -> None:
    _wrap(owner, name, before=False, when=when)


def arm(point: str, hostname: str) -> None:
    """Wrap the seam of ``point`` so that the process dies there."""
    from modoboa_pro.virtualhosts import conf, constants, jobs, pipeline, recording
    from modoboa_pro.virtualhosts.adapters import nginx, probe, storage, webroot

    def https_site_on_disk(*args: Any, **kwargs: Any) -> bool:
        site = nginx.site_path(conf.get("VIRTUALHOSTS_NGINX_CONF_DIR"), hostname)
        return "ssl_certificate" in site.read_text()

    def is_probe(webroot_dir: Any, token: str, content: str) -> bool:
        return token.startswith(probe.PROBE_TOKEN_PREFIX)

    def is_challenge(webroot_dir: Any, token: str, content: str) -> bool:
        return not is_probe(webroot_dir, token, content)

    def is_key(path: Any, data: bytes, mode: int) -> bool:
        return path.name == "privkey.pem"

    def is_https(conf_dir: Any, name: str, content: str) -> bool:
        return "ssl_certificate" in content

    def is_step(step: str) -> Callable[..., bool]:
        return lambda host_id, generation, run_id, deferred: deferred == step

    HTTP, HTTPS = constants.STEP_HTTP_SITE, constants.STEP_HTTPS_SITE

    seams: dict[str, Callable[[], None]] = {
        "http_site_written": lambda: after(nginx, "write_site"),
        "http_site_probe": lambda: after(webroot, "publish_token", is_probe),
        "http_site_deferred": lambda: after(jobs, "defer_continue_provisioning", is_step(HTTP)),
        # Served and recorded, inline or in the follow-up job: the chain goes on from here.
        "http_site_served": lambda: before(pipeline, "_after_http_site"),
        "order": lambda: after(webroot, "publish_token", is_challenge),
        "certificate_issued": lambda: before(storage, "write_certificate_pair"),
        "key_written": lambda: after(storage, "atomic_write", is_key),
        "chain_written": lambda: before(storage, "_point_link"),
        "pair_swapped": lambda: after(storage, "_point_link"),
        "https_site_written": lambda: after(nginx, "write_site", is_https),
        "https_site_deferred": lambda: after(jobs, "defer_continue_provisioning", is_step(HTTPS)),
        "reload_tested": lambda: before(nginx, "run_reload", https_site_on_disk),
        "reloaded": lambda: after(nginx, "run_reload", https_site_on_disk),
        "finish_queued": lambda: after(jobs, "defer_finish_renewal"),
        "verified": lambda: before(recording, "mark_success"),
    }
    seams[point]()


def work_until_death(point: str, hostname: str, overrides: dict[str, Any]) -> int:
    """Arm ``point``, then work the ``modoboa`` queue (Django is set up)."""
    from django.conf import settings

    for name, value in overrides.items():
        setattr(settings, name, value)
    arm(point, hostname)

    import django_rq
    from rq import SimpleWorker

    # In this process, as the worker's work horse would be: the death takes the worker too.
    queue = django_rq.get_queue("modoboa")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    return NOT_REACHED


def _answer(**values: Any) -> None:
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


def _forked_child(request: dict[str, Any]) -> NoReturn:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        code = work_until_death(request["point"], request["hostname"], request["settings"])
    except BaseException:  # noqa: BLE001 - reported in the log, as a worker would
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> int:
    """Fork one dying worker per request line on stdin (see the module's docstring)."""
    import django

    django.setup()
    # Load what every child uses once, here; the children open their own connections.
    import django_rq  # noqa: F401
    import rq  # noqa: F401
    from django.db import connections

    from modoboa_pro.virtualhosts import jobs, pipeline  # noqa: F401

    connections.close_all()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _forked_child(request)
        _answer(pid=pid)
        _, status = os.waitpid(pid, 0)
        _answer(returncode=os.waitstatus_to_exitcode(status))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        return serve()
    point, hostname = argv
    import django

    django.setup()
    return work_until_death(point, hostname, json.loads(os.environ[SETTINGS_ENV]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

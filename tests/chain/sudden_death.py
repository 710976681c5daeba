"""A `modoboa` worker that SIGKILLs itself at one point of the chain (run in a child process).

``python -m tests.chain.sudden_death POINT HOSTNAME`` sets Django up with the test settings
(plus the overrides of the parent test, in ``SETTINGS_ENV``), wraps one seam function so that
the process kills itself at POINT, then works the ``modoboa`` queue like a real worker. The
death is real: no exception, no ``finally``, no cleanup; locks, RQ's records and files stay
as they were. The child exits with ``NOT_REACHED`` if the chain never got there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

SETTINGS_ENV = "MODOBOA_PRO_TEST_SETTINGS"
NOT_REACHED = 3

# A point: what the chain has just done (or is about to do) when the process dies.
PROVISIONING_POINTS = (
    "http_site_written",  # the HTTP-only site file is written, nginx not reloaded
    "http_site_probe",  # nginx reloaded, the preflight's probe token is in the webroot
    "http_site_served",  # the http_site step is recorded
    "order",  # the challenge token is published, the CA not yet told
    "certificate_issued",  # the CA issued the certificate; nothing stored
    "key_written",  # the new private key is in its version directory, the chain not yet
    "chain_written",  # both files are written, certs/<host> still points at the old pair
    "pair_swapped",  # certs/<host> points at the new pair; older versions not pruned
    "https_site_written",  # the HTTPS site file is written, nginx not tested or reloaded
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
    from modoboa_pro.virtualhosts import conf, jobs, pipeline, recording
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

    seams: dict[str, Callable[[], None]] = {
        "http_site_written": lambda: after(nginx, "write_site"),
        "http_site_probe": lambda: after(webroot, "publish_token", is_probe),
        "http_site_served": lambda: after(pipeline, "_http_site"),
        "order": lambda: after(webroot, "publish_token", is_challenge),
        "certificate_issued": lambda: before(storage, "write_certificate_pair"),
        "key_written": lambda: after(storage, "atomic_write", is_key),
        "chain_written": lambda: before(storage, "_point_link"),
        "pair_swapped": lambda: after(storage, "_point_link"),
        "https_site_written": lambda: after(nginx, "write_site", is_https),
        "reload_tested": lambda: before(nginx, "run_reload", https_site_on_disk),
        "reloaded": lambda: after(nginx, "run_reload", https_site_on_disk),
        "finish_queued": lambda: after(jobs, "defer_finish_renewal"),
        "verified": lambda: before(recording, "mark_success"),
    }
    seams[point]()


def main(argv: list[str]) -> int:
    point, hostname = argv
    import django

    django.setup()
    from django.conf import settings

    for name, value in json.loads(os.environ[SETTINGS_ENV]).items():
        setattr(settings, name, value)
    arm(point, hostname)

    import django_rq
    from rq import SimpleWorker

    # In this process, as the worker's work horse would be: the death takes the worker too.
    queue = django_rq.get_queue("modoboa")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

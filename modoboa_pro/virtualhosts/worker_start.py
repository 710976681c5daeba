"""What an RQ worker loads once, when it starts, so that its jobs do not.

RQ runs each job in a fork of the worker: what the worker loaded is inherited, and
what a job loads is lost with it. So the worker loads the jobs' modules, compiles the
site templates, and imports the modules the libraries import only on first use: each
job imported them again, on the way to a certificate (measured: ``docs/benchmarks.md``).
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("modoboa.jobs")

# Imported by the libraries on first use, inside a job, listed by what a job does.
FIRST_USE_MODULES = (
    # The first query: Django imports its SQL compiler then (~10 ms).
    "django.db.models.sql.compiler",
    # The first TLS connection to the CA: the HTTP/2 protocol of urllib3-future (installed as
    # urllib3 by Modoboa's caldav dependency), the OpenSSL backend of cryptography.
    "urllib3.contrib.hface.protocols.http2",
    "cryptography.hazmat.backends.openssl",
    # Each request of requests reads ~/.netrc (trust_env); dates parsed with strptime.
    "netrc",
    "shlex",
    "_strptime",
    # The pre-flight's DNS answers.
    "dns.rdtypes.IN.A",
    "dns.rdtypes.IN.AAAA",
)


def prepare() -> None:
    """Load, in the worker, what every job would otherwise load again."""
    from . import jobs, rendering  # noqa: F401 (jobs: imported for the forks)

    rendering.load_templates()
    for name in FIRST_USE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # another version of the library: nothing to load ahead
            logger.debug("worker start: %s not importable", name)

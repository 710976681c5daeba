"""Django app configuration."""

import sys

from django.apps import AppConfig

# The management commands that start RQ workers (django-rq).
WORKER_COMMANDS = ("rqworker", "rqworker-pool")


class VirtualHostsConfig(AppConfig):
    name = "modoboa_pro.virtualhosts"
    label = "virtualhosts"
    verbose_name = "Modoboa Pro: virtual hosts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, handlers, parameters  # noqa: F401

        parameters.register()
        if sys.argv[1:2] and sys.argv[1] in WORKER_COMMANDS:
            # RQ runs each job in a fork of the worker: what the worker loaded is
            # inherited, the rest is loaded again by every job (the jobs' modules, with
            # the ACME client: ~0.15 s per job; the site templates: ~8 ms).
            from . import worker_start

            worker_start.prepare()

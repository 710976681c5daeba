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
            # RQ runs each job in a fork of the worker: what the worker imported is
            # inherited, the rest is imported again by every job (the jobs' modules, with
            # the ACME client: ~0.15 s per job, twice per nginx reload and provisioning).
            # The site templates compiled here are kept by Django's cached loader for
            # every job (each job that renders a site compiled them again: ~8 ms).
            from . import jobs, rendering  # noqa: F401 (jobs: imported for the forks)

            rendering.load_templates()

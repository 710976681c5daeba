"""What a worker loads when it starts, so that each job (a fork of it) does not."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from modoboa_pro.virtualhosts import worker_start


def test_every_first_use_module_exists_in_the_installed_libraries():
    # A module renamed by a library update would silently stop being loaded ahead:
    # every job would pay for it again.
    missing = [n for n in worker_start.FIRST_USE_MODULES if importlib.util.find_spec(n) is None]
    assert missing == []


def test_a_started_worker_holds_what_its_jobs_would_load():
    # A fresh interpreter: this one has loaded everything already.
    script = (
        "import django, sys\n"
        "django.setup()\n"
        "before = set(sys.modules)\n"
        "from modoboa_pro.virtualhosts import worker_start\n"
        "worker_start.prepare()\n"
        "wanted = {'modoboa_pro.virtualhosts.jobs', *worker_start.FIRST_USE_MODULES}\n"
        "print(sorted(wanted - set(sys.modules)))\n"
        "print(sorted(wanted & before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    missing, loaded_by_django = done.stdout.strip().splitlines()
    assert missing == "[]"
    # None of them comes with Django's own start: without the worker's loading, each job would.
    assert loaded_by_django == "[]"

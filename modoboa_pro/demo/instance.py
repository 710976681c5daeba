"""A throwaway Modoboa instance: deployed, configured for the plugin, run as an operator would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from redis import Redis
from rq import Queue, Worker

import modoboa_pro
from modoboa_pro.testing import HarnessError, ManagedProcess, NginxServer, PebbleServer

# Environment variables that would make a child load another project's settings (e.g. the
# test suite's) instead of the instance's own.
_FOREIGN_ENV = ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")
_FOREIGN_ENV_PREFIX = "MODOBOA_PRO_TEST_"
# Where `modoboa-admin.py deploy` leaves room for extensions in MODOBOA_APPS.
_EXTENSIONS_MARKER = "    # Modoboa extensions here.\n"
APP = "modoboa_pro.virtualhosts"


class DemoError(RuntimeError):
    """Something the demo needs failed; the message says what and where to look."""


def child_environment() -> dict[str, str]:
    """This process's environment without what would point a child at other settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _FOREIGN_ENV and not key.startswith(_FOREIGN_ENV_PREFIX)
    }
    # The instance runs this very plugin: a worktree's (imported through PYTHONPATH), not
    # whichever checkout the virtualenv installed in editable mode.
    env["PYTHONPATH"] = str(Path(modoboa_pro.__file__).resolve().parent.parent)
    # nginx lives in /usr/sbin, which a non-root PATH often lacks.
    path = env.get("PATH", "/usr/bin:/bin")
    env["PATH"] = ":".join([path, "/usr/sbin", "/sbin"])
    env["PYTHONUNBUFFERED"] = "1"  # worker logs appear as they are written
    return env


@dataclass(frozen=True)
class Wiring:
    """Where the instance finds the servers the demo started."""

    redis_url: str
    nginx: NginxServer
    pebble: PebbleServer
    app_port: int
    hostnames: Sequence[str]
    dns_address: str | None = None  # the DNS stub: "host:port"


def settings_snippet(wiring: Wiring) -> str:
    """What an operator appends to settings.py, pointed at the loopback servers."""
    nginx, pebble = wiring.nginx, wiring.pebble
    allowed = ["127.0.0.1", *wiring.hostnames]
    return f"""

# --- Added for modoboa_pro.virtualhosts (make demo) -------------------------------------

# Demo only: never contact Modoboa's public API; answer on loopback and for the demo hosts.
DISABLE_DASHBOARD_EXTERNAL_QUERIES = True
ALLOWED_HOSTS += {allowed!r}
# The web UI is served by nginx over HTTPS in front of runserver (modoboa_pro.demo.ui):
# nginx says the original scheme, so OAuth discovery and redirects use https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The certificate authority: Pebble, a test ACME server, trusted through its own CA bundle.
ACME_DIRECTORY_URL = {pebble.directory_url!r}
ACME_CA_BUNDLE = {str(pebble.ca_bundle)!r}

# nginx: the directory its nginx.conf includes, its test/reload commands and ports.
VIRTUALHOSTS_NGINX_CONF_DIR = {str(nginx.sites_dir)!r}
VIRTUALHOSTS_NGINX_TEST_COMMAND = {nginx.test_command!r}
VIRTUALHOSTS_NGINX_RELOAD_COMMAND = {nginx.reload_command!r}
VIRTUALHOSTS_NGINX_PID_FILE = {str(nginx.pid_path)!r}
VIRTUALHOSTS_HTTP_PORT = {nginx.http_port}
VIRTUALHOSTS_HTTPS_PORT = {nginx.https_port}
VIRTUALHOSTS_LISTEN_ADDRESS = "127.0.0.1"
# The HTTPS sites forward to the application served by `manage.py runserver`.
VIRTUALHOSTS_UPSTREAM = "http://127.0.0.1:{wiring.app_port}"
VIRTUALHOSTS_UPSTREAM_PROTOCOL = "http"
# The pre-flight before each order asks the demo's DNS stub, as Pebble does.
VIRTUALHOSTS_PREFLIGHT_RESOLVER = {wiring.dns_address!r}
# Pebble has no rate limits: a budget far above Let's Encrypt's, so that bursts of hundreds of
# creations and renewals (tests/scale) still go through the ledger without being held back.
VIRTUALHOSTS_ORDER_BUDGET = {{"orders_per_account": 100_000}}
# No Postfix or Dovecot of its own: the mail deploy is off, so that a mail host created here
# never touches the machine's mail services (tests/mail runs their own).
VIRTUALHOSTS_MAIL_SERVICES = []

# Modoboa's LOGGING has no handler for the jobs logger: without this its lines vanish.
LOGGING["formatters"]["jobs"] = {{"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}}
LOGGING["handlers"]["console"] = {{"class": "logging.StreamHandler", "formatter": "jobs"}}
LOGGING["loggers"]["modoboa.jobs"] = {{
    "handlers": ["console"],
    "level": "INFO",
    "propagate": False,
}}
# SQLite and concurrent writers (the workers record each step while a user logs in): a
# transaction that reads, then writes, fails at once with "database is locked" when another
# process writes meanwhile. IMMEDIATE transactions take the write lock first and wait for it.
# In WAL mode readers never wait for the writer, and a commit only appends to the log.
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {{}}).update(
        transaction_mode="IMMEDIATE",
        timeout=20,
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    )

# Server errors with their traceback in the application's log (runserver.log).
LOGGING["loggers"]["django.request"] = {{
    "handlers": ["console"],
    "level": "ERROR",
    "propagate": False,
}}
"""


class DjangoProcess(ManagedProcess):
    """A long-running ``manage.py`` command of the instance (a worker, the app server)."""

    start_timeout = 60.0  # Modoboa's settings and apps take a few seconds to load

    def __init__(
        self,
        name: str,
        instance: ModoboaInstance,
        args: Sequence[str],
        ready: Callable[[], bool],
    ) -> None:
        self.name = name
        super().__init__(instance.logs_dir)
        self.instance = instance
        self.args = list(args)
        self._ready = ready

    def command(self) -> list[str]:
        return [sys.executable, str(self.instance.manage_py), *self.args]

    def environment(self) -> dict[str, str]:
        return child_environment()

    def ready(self) -> bool:
        return self._ready()


class ModoboaInstance:
    """``modoboa-admin.py deploy`` output under ``root``, driven through ``manage.py``."""

    name = "modoboa_demo"

    def __init__(self, root: Path, database_url: str | None = None) -> None:
        """``database_url``: a PostgreSQL database (``postgres://…``, created beforehand)
        instead of a SQLite file under ``root``."""
        self.root = Path(root).absolute()
        self.project_dir = self.root / self.name
        self.manage_py = self.project_dir / "manage.py"
        self.settings_path = self.project_dir / self.name / "settings.py"
        self.cron_config = self.project_dir / self.name / "cron_config.py"
        self.database = self.root / "modoboa.sqlite3"
        self.database_url = database_url or f"sqlite:///{self.database}"
        self.logs_dir = self.root / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.commands_log = self.logs_dir / "manage.log"

    # -- one-shot commands -------------------------------------------------------------

    def _run(self, argv: list[str], what: str, cwd: Path, timeout: float = 300) -> str:
        with open(self.commands_log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            # Its own session: a Ctrl-C reaches only us, and we stop the whole command
            # (deploy runs manage.py children) through its process group.
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as err:
                _kill_group(proc)
                raise DemoError(f"{what} did not finish within {timeout:.0f}s") from err
            except BaseException:
                _kill_group(proc)
                raise
            log.write(output)
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise DemoError(f"{what} failed (exit {proc.returncode}):\n{tail}")
        return output

    def manage(self, *args: str, timeout: float = 300) -> str:
        """Run ``python manage.py ARGS`` in the instance; return its standard output."""
        argv = [sys.executable, str(self.manage_py), *args]
        return self._run(argv, f"manage.py {' '.join(args)}", self.project_dir, timeout)

    def deploy(self, redis_url: str) -> None:
        """Create the instance with Modoboa's own installer command."""
        admin = Path(sys.executable).parent / "modoboa-admin.py"
        if not admin.exists():
            raise DemoError(f"{admin} not found: install Modoboa in this virtualenv")
        self._run(
            [
                sys.executable,
                str(admin),
                "deploy",
                self.name,
                "--dburl",
                f"default:{self.database_url}",
                "--domain",
                "localhost",
                "--admin-username",
                "admin",
                "--redisurl",
                redis_url,
            ],
            "modoboa-admin.py deploy",
            self.root,
        )
        # deploy reports failures of its own migrate on stderr but still exits 0.
        on_sqlite = self.database_url.startswith("sqlite:")
        if not self.settings_path.exists() or (on_sqlite and not self.database.exists()):
            raise DemoError(
                f"modoboa-admin.py deploy did not create the instance: see {self.commands_log}"
            )

    def enable_plugin(self, wiring: Wiring) -> None:
        """Add the app to MODOBOA_APPS and append the plugin's settings, as in the docs."""
        text = self.settings_path.read_text()
        if _EXTENSIONS_MARKER not in text:
            raise DemoError(f"{self.settings_path}: no '# Modoboa extensions here.' line")
        text = text.replace(_EXTENSIONS_MARKER, f"{_EXTENSIONS_MARKER}    {APP!r},\n", 1)
        self.settings_path.write_text(text + settings_snippet(wiring))

    # -- long-running processes --------------------------------------------------------

    def worker(self, queue: str, redis: Redis, number: int = 1) -> DjangoProcess:
        """``rqworker QUEUE``; ``number`` tells several workers of one queue apart."""

        def registered() -> bool:
            workers = Worker.all(queue=Queue(queue, connection=redis))
            return any(w.pid == process.pid for w in workers)

        name = f"rqworker-{queue}" + (f"-{number}" if number > 1 else "")
        process = DjangoProcess(name, self, ["rqworker", queue], registered)
        return process

    def app_server(self, port: int) -> DjangoProcess:
        def answers() -> bool:
            requests.get(f"http://127.0.0.1:{port}/api/v2/", timeout=2)
            return True

        args = ["runserver", f"127.0.0.1:{port}", "--noreload"]
        return DjangoProcess("runserver", self, args, answers)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Stop a one-shot command and whatever it spawned (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def start_all(processes: Sequence[ManagedProcess]) -> None:
    """Start processes side by side (each loads Django for seconds); raise the first failure."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=len(processes))
    errors = []
    try:
        for future in [pool.submit(p.start) for p in processes]:
            try:
                future.result()
            except HarnessError as err:
                errors.append(str(err))
    finally:
        # On Ctrl-C, do not wait for the readiness polls: stopping the processes ends them.
        pool.shutdown(wait=False, cancel_futures=True)
    if errors:
        raise DemoError("\n\n".join(errors))

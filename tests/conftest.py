"""Fixtures that start the real programs (redis-server, Pebble, nginx, a DNS stub).

Each runs on free loopback ports, is polled until ready, and is stopped by PID
when the session ends. Tests that provision hosts use ``chain``: it points the
plugin's settings and parameters at these servers and drains the RQ queues
with in-process burst workers.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from modoboa_pro.testing import AcmeProxy, DnsResponder, NginxServer, PebbleServer, RedisServer
from modoboa_pro.virtualhosts import constants

from .deployment import Stack, deployed_stack

BACKEND_BODY = b"modoboa application behind nginx\n"

# The history of a host's first successful run, oldest first.
FIRST_ISSUANCE_STEPS = [
    (constants.STEP_HTTP_SITE, "ok"),
    (constants.STEP_ACCOUNT, "ok"),
    (constants.STEP_ORDER, "ok"),
    (constants.STEP_STORE, "ok"),
    (constants.STEP_HTTPS_SITE, "ok"),
    (constants.STEP_VERIFY, "ok"),
]


def _system_mail_files() -> dict[str, float | None]:
    """The plugin's files at their default (system) paths, with their modification times."""
    from modoboa_pro.virtualhosts.conf import DEFAULTS

    paths = [
        DEFAULTS["VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP"],
        DEFAULTS["VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP"] + ".db",
        DEFAULTS["VIRTUALHOSTS_MAIL_DOVECOT_INCLUDE"],
    ]
    return {p: (os.stat(p).st_mtime if os.path.exists(p) else None) for p in paths}


@pytest.fixture(scope="session", autouse=True)
def _system_mail_services_untouched() -> Iterator[None]:
    """The suite never writes the machine's own Postfix and Dovecot files (tests/mail runs
    its own instances): checked once the session ends."""
    before = _system_mail_files()
    yield
    assert _system_mail_files() == before, (
        "a test wrote the system's Postfix/Dovecot files: turn the mail deploy off "
        "(VIRTUALHOSTS_MAIL_SERVICES) or point it at a fixture's own instances"
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The real redis-server the settings' RQ_QUEUES point at (unix socket)."""
    server = RedisServer(Path(settings.RUN_DIR) / "redis", socket_path=Path(settings.REDIS_SOCKET))
    server.start()
    client = server.client()
    if client.dbsize():  # like django-rq: never run against a Redis holding data
        server.stop()
        pytest.exit("the test Redis is not empty", returncode=3)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_redis(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with empty queues and no locks (only when Redis is in use)."""
    yield
    if "redis_server" in request.fixturenames:
        request.getfixturevalue("redis_server").client().flushdb()


@pytest.fixture(scope="session")
def dns_responder() -> Iterator[DnsResponder]:
    responder = DnsResponder()
    responder.start()
    yield responder
    responder.stop()


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    server = NginxServer(tmp_path_factory.mktemp("nginx"))
    server.start()
    # A privileged worker subprocess reads its commands from the environment.
    os.environ["MODOBOA_PRO_TEST_NGINX_TEST_COMMAND"] = json.dumps(server.test_command)
    os.environ["MODOBOA_PRO_TEST_NGINX_RELOAD_COMMAND"] = json.dumps(server.reload_command)
    os.environ["MODOBOA_PRO_TEST_NGINX_PID_FILE"] = str(server.pid_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pebble_server(
    tmp_path_factory: pytest.TempPathFactory,
    nginx_server: NginxServer,
    dns_responder: DnsResponder,
) -> Iterator[PebbleServer]:
    """Pebble validating HTTP-01 on nginx's port, resolving every name to 127.0.0.1."""
    server = PebbleServer(
        tmp_path_factory.mktemp("pebble"),
        http_port=nginx_server.http_port,
        dns_address=dns_responder.address,
        nonce_reject_percent=int(os.environ.get("PEBBLE_WFE_NONCEREJECT", "0")),
    )
    server.start()
    yield server
    server.stop()


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BACKEND_BODY)))
        self.end_headers()
        self.wfile.write(BACKEND_BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def backend() -> Iterator[str]:
    """A stand-in for the Modoboa application the HTTPS site forwards to."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def modoboa(db: None) -> None:
    """Modoboa's initial data: the LocalConfig holding parameters, the admin user."""
    from django.core import management

    management.call_command("load_initial_data", "--no-frontend", verbosity=0)


def set_parameters(**values: object) -> None:
    """Set global parameters of the virtualhosts app, as the Settings page would."""
    from modoboa.core.models import LocalConfig

    localconfig = LocalConfig.objects.first()
    assert localconfig is not None, "load Modoboa's initial data first (fixture 'modoboa')"
    localconfig.parameters.set_values(values, app="virtualhosts")
    localconfig.save()


REPO = Path(__file__).resolve().parent.parent


def work_burst(queue, **kwargs: object) -> None:
    """Run ``queue``'s jobs in this process with an RQ ``SimpleWorker``, until it is empty.

    The worker does not subscribe to its command channel (RQ's pubsub thread): nothing sends
    commands to an in-process burst worker, and joining that thread when the burst ends costs
    about a quarter of a second, several times in every chain test. Real workers
    (``start_privileged_worker``, ``sudden_death.py``, the deployed instance) keep it.
    """
    from rq import SimpleWorker

    class BurstWorker(SimpleWorker):
        def subscribe(self) -> None:
            pass

        def unsubscribe(self) -> None:
            pass

    BurstWorker([queue], connection=queue.connection).work(burst=True, **kwargs)


@dataclass
class Chain:
    """The real servers and the directories one test provisions into."""

    nginx: NginxServer
    pebble: PebbleServer
    dns: DnsResponder
    redis: RedisServer
    storage: Path

    def drain(self, max_rounds: int = 20) -> None:
        """Run burst workers on the modoboa and privileged queues until both are empty."""
        import django_rq

        queues = [django_rq.get_queue("modoboa"), django_rq.get_queue("privileged")]
        for _ in range(max_rounds):
            if not any(q.count for q in queues):
                return
            for queue in queues:
                if queue.count:
                    work_burst(queue)
        raise AssertionError("queues did not drain")

    def https(
        self,
        hostname: str,
        path: str = "/",
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ):
        """A request over HTTPS with SNI, as a browser makes it: the served chain verified
        against Pebble's root, the name against the certificate (a urllib3 response)."""
        import urllib3

        with tempfile.NamedTemporaryFile(suffix=".pem") as roots:
            roots.write(self.pebble.issuing_roots_pem())
            roots.flush()
            pool = urllib3.HTTPSConnectionPool(
                "127.0.0.1",
                self.nginx.https_port,
                server_hostname=hostname,
                assert_hostname=hostname,
                cert_reqs="CERT_REQUIRED",
                ca_certs=roots.name,
                retries=False,
            )
            headers = {"Host": hostname, **(headers or {})}
            return pool.request(method, path, body=body, headers=headers)

    def failed_jobs(self) -> list[str]:
        import django_rq

        registry = django_rq.get_queue("modoboa").failed_job_registry
        return list(registry.get_job_ids())


@pytest.fixture
def chain(
    transactional_db: None,
    modoboa: None,
    redis_server: RedisServer,
    nginx_server: NginxServer,
    pebble_server: PebbleServer,
    dns_responder: DnsResponder,
    backend: str,
    tmp_path: Path,
    settings,  # pytest-django's per-test settings override
) -> Iterator[Chain]:
    """Point the plugin at the real servers; Let's Encrypt on, a fresh storage path."""
    storage = tmp_path / "acme"
    settings.ACME_DIRECTORY_URL = pebble_server.directory_url
    settings.ACME_CA_BUNDLE = str(pebble_server.ca_bundle)
    settings.VIRTUALHOSTS_NGINX_CONF_DIR = str(nginx_server.sites_dir)
    settings.VIRTUALHOSTS_NGINX_TEST_COMMAND = nginx_server.test_command
    settings.VIRTUALHOSTS_NGINX_RELOAD_COMMAND = nginx_server.reload_command
    settings.VIRTUALHOSTS_NGINX_PID_FILE = str(nginx_server.pid_path)
    settings.VIRTUALHOSTS_HTTP_PORT = nginx_server.http_port
    settings.VIRTUALHOSTS_HTTPS_PORT = nginx_server.https_port
    settings.VIRTUALHOSTS_LISTEN_ADDRESS = "127.0.0.1"
    settings.VIRTUALHOSTS_UPSTREAM = backend
    settings.VIRTUALHOSTS_UPSTREAM_PROTOCOL = "http"
    settings.VIRTUALHOSTS_RELOAD_MODE = "local"
    # The pre-flight asks the DNS stub, as Pebble does (every name: 127.0.0.1, nginx).
    settings.VIRTUALHOSTS_PREFLIGHT_RESOLVER = dns_responder.address
    set_parameters(
        enable_letsencrypt=True,
        acme_account_email="hostmaster@example.org",
        acme_account_storage_path=str(storage),
        certificate_renewal_threshold=30,
        # The sweep's alert check is tested in tests/test_monitoring_alerts.py; off here, as
        # the week-long simulations run thousands of sweeps.
        enable_alert_emails=False,
    )
    dns_responder.nxdomain.clear()
    dns_responder.silent.clear()
    dns_responder.addresses.clear()
    dns_responder.answers_left.clear()
    dns_responder.tlsa.clear()
    yield Chain(nginx_server, pebble_server, dns_responder, redis_server, storage)
    # Leave nginx as the next test expects it: no sites.
    for site in nginx_server.sites_dir.glob("*"):
        if site.is_dir():
            shutil.rmtree(site)
        else:
            site.unlink()
    nginx_server.reload()


@contextmanager
def proxied_ca(chain: Chain, settings, *, renewal_info: bool = False) -> Iterator[AcmeProxy]:
    """Pebble behind an ``AcmeProxy`` the test controls: the plugin talks to the proxy and
    trusts its test CA (``renewal_info``: the proxy plays ARI)."""
    workdir = Path(tempfile.mkdtemp(prefix="acme-proxy-", dir=chain.storage.parent))
    with AcmeProxy(
        workdir, chain.pebble.directory_url, chain.pebble.ca_bundle, renewal_info=renewal_info
    ) as server:
        settings.ACME_DIRECTORY_URL = server.directory_url
        settings.ACME_CA_BUNDLE = str(server.ca_bundle)
        yield server


def start_privileged_worker(log_path: Path) -> subprocess.Popen:
    """A real `rqworker privileged` process with the test settings, logging to ``log_path``."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(REPO))
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "django", "rqworker", "privileged"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_by_pid(process: subprocess.Popen) -> None:
    """SIGTERM (RQ's warm shutdown), then SIGKILL if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def privileged_worker(chain: Chain, settings) -> Iterator[subprocess.Popen]:
    """Modoboa's root worker, as a real `rqworker privileged` process (stopped by PID)."""
    settings.VIRTUALHOSTS_RELOAD_MODE = "privileged"
    settings.VIRTUALHOSTS_RELOAD_TIMEOUT = 30
    process = start_privileged_worker(chain.storage.parent / "privileged-worker.log")
    yield process
    stop_by_pid(process)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A deployed Modoboa with the plugin, its workers and web UI (see tests/deployment.py)."""
    yield from deployed_stack(tmp_path_factory)


@pytest.fixture
def redis_down(settings, tmp_path: Path) -> Iterator[None]:
    """Every RQ queue points at a socket nobody listens on: Redis is down."""
    working = settings.RQ_QUEUES
    settings.RQ_QUEUES = {q: {"URL": f"unix://{tmp_path}/no-redis.sock?db=0"} for q in working}
    yield
    settings.RQ_QUEUES = working


@pytest.fixture
def world(modoboa, redis_server, tmp_path):
    """Let's Encrypt configured; requests' on-commit work really reaches Redis (see call)."""
    set_parameters(
        enable_letsencrypt=True,
        acme_account_email="hostmaster@example.org",
        acme_account_storage_path=str(tmp_path / "acme"),
    )
    from .api_world import make_world

    return make_world()


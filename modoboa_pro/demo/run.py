"""The demo's script: start the servers, deploy Modoboa, create hosts, prove HTTPS, clean up."""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from modoboa_pro.demo import ui
from modoboa_pro.demo.client import ModoboaApi, https_get, openssl_proof
from modoboa_pro.demo.console import Console
from modoboa_pro.demo.instance import (
    APP,
    DemoError,
    DjangoProcess,
    ModoboaInstance,
    Wiring,
    start_all,
)
from modoboa_pro.demo.progress import DatabaseHistory, follow
from modoboa_pro.testing import (
    DnsResponder,
    HarnessError,
    ManagedProcess,
    NginxServer,
    PebbleServer,
    RedisServer,
    free_port,
)

HOSTNAMES = ("mail.demo.test", "webmail.demo.test")
ACCOUNT_EMAIL = "hostmaster@demo.test"
PROVISION_TIMEOUT = 90.0
STAGES = 6
_REQUIRED_BINARIES = {
    "redis-server": "redis-server",
    "nginx": "nginx",
    "pebble": "pebble",
    "openssl": "openssl",
}
_TOKEN_RE = re.compile(r"Generated token (\w+) for user")


class _Terminated(Exception):
    """SIGTERM or SIGHUP: stop like on Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _missing_binaries() -> list[str]:
    return [
        package
        for binary, package in _REQUIRED_BINARIES.items()
        if not (shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin"))
    ]


class Demo:
    """One run; everything it starts is registered in ``self.started`` to be stopped."""

    def __init__(
        self,
        console: Console,
        root: Path,
        hostnames: Sequence[str],
        *,
        database_url: str | None = None,
        modoboa_workers: int = 1,
    ) -> None:
        """``database_url``: PostgreSQL instead of SQLite; ``modoboa_workers``: how many
        `rqworker modoboa` processes run the chains side by side."""
        self.console = console
        self.root = root
        self.hostnames = list(hostnames)
        self.database_url = database_url
        self.modoboa_workers = modoboa_workers
        self.others: list[tuple[str, Callable[[], None]]] = []  # in-process servers
        self.processes: list[ManagedProcess] = []
        self.log_paths: list[Path] = []

    # -- bookkeeping -------------------------------------------------------------------

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        self.log_paths.append(process.log_path)
        return process

    def stop_all(self) -> list[str]:
        """Stop what was started, newest first; return ``name (pid N)`` for each."""
        stopped = []
        for process in reversed(self.processes):
            pid = process.pid
            if pid is not None:
                process.stop()
                stopped.append(f"{process.name} (pid {pid})")
        for name, stop in reversed(self.others):
            stop()
            stopped.append(name)
        return stopped

    def wait(self) -> None:
        """Keep everything running until Ctrl-C (or SIGTERM); fail if a process dies."""
        while True:
            time.sleep(1)
            self._check_alive()

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.pid is None or not process.running:
                raise DemoError(f"{process.name} exited unexpectedly: see {process.log_path}")

    # -- stages ------------------------------------------------------------------------

    def run(self) -> bool:
        """The whole demo: True when every host became active."""
        self.start_services()
        self.deploy()
        self.start_modoboa()
        return self.provision()

    def start_services(self) -> None:
        c = self.console
        c.stage("Starting the loopback services (Redis, DNS, nginx, Pebble)")
        redis = self._track(RedisServer(self.root / "redis")).start()
        assert isinstance(redis, RedisServer)
        dns = DnsResponder().start()
        self.others.append(("DNS responder", dns.stop))
        nginx = self._track(NginxServer(self.root / "nginx"))
        assert isinstance(nginx, NginxServer)
        self.log_paths += [nginx.error_log_path, nginx.access_log_path]
        nginx.start()
        pebble = self._track(
            PebbleServer(self.root / "pebble", http_port=nginx.http_port, dns_address=dns.address)
        )
        assert isinstance(pebble, PebbleServer)
        pebble.start()
        pebble_root = self.root / "pebble" / "issuing-root.pem"
        pebble_root.write_bytes(pebble.issuing_roots_pem())
        c.facts(
            [
                ("redis-server", f"{redis.socket_path} (unix socket only), pid {redis.pid}"),
                ("DNS responder", f"{dns.address}: every name -> 127.0.0.1"),
                (
                    "nginx",
                    f"http 127.0.0.1:{nginx.http_port}, https 127.0.0.1:{nginx.https_port}, "
                    f"pid {nginx.pid}",
                ),
                ("", f"includes {nginx.sites_dir}/*.conf"),
                (
                    "Pebble (ACME CA)",
                    f"{pebble.directory_url}, validates on port {nginx.http_port}, "
                    f"pid {pebble.pid}",
                ),
            ]
        )
        self.redis, self.dns, self.nginx, self.pebble = redis, dns, nginx, pebble
        self.pebble_root = pebble_root

    def deploy(self) -> None:
        c = self.console
        redis, nginx, pebble = self.redis, self.nginx, self.pebble
        instance = ModoboaInstance(self.root / "instance", self.database_url)
        engine = "SQLite" if self.database_url is None else "PostgreSQL"
        c.stage(f"Deploying a Modoboa instance on {engine} (modoboa-admin.py deploy)")
        self.log_paths.append(instance.commands_log)
        began = time.monotonic()
        instance.deploy(redis.url)
        c.facts(
            [
                ("instance", str(instance.project_dir)),
                ("database", str(instance.database) if self.database_url is None else engine),
                ("took", f"{time.monotonic() - began:.1f}s"),
            ]
        )

        c.stage("Installing the plugin into the instance")
        app_port = free_port()
        instance.enable_plugin(
            Wiring(
                redis.url,
                nginx,
                pebble,
                app_port=app_port,
                hostnames=self.hostnames,
                dns_address=self.dns.address,
            )
        )
        c.facts(
            [
                ("settings.py", f"MODOBOA_APPS += {APP!r}"),
                ("", f"ACME_DIRECTORY_URL = {pebble.directory_url!r}"),
                ("", f"VIRTUALHOSTS_NGINX_CONF_DIR = {str(nginx.sites_dir)!r}"),
                ("", f"VIRTUALHOSTS_UPSTREAM = 'http://127.0.0.1:{app_port}'"),
                ("", "LOGGING: modoboa.jobs -> console"),
            ]
        )
        began = time.monotonic()
        instance.manage("migrate", "--noinput")
        instance.manage("load_initial_data", "--admin-username", "admin")
        checks = instance.manage("check").strip().splitlines()
        token_out = instance.manage("drf_create_token", "admin")
        match = _TOKEN_RE.search(token_out)
        if match is None:
            raise DemoError(f"drf_create_token printed no token: {token_out.strip()!r}")
        token = match.group(1)
        self.instance, self.app_port, self.token = instance, app_port, token
        c.facts(
            [
                ("manage.py migrate", "ok"),
                ("load_initial_data", "ok"),
                ("manage.py check", checks[-1] if checks else "ok"),
                ("drf_create_token", "API token for 'admin' created"),
                ("took", f"{time.monotonic() - began:.1f}s"),
            ]
        )

    def start_modoboa(self) -> None:
        c = self.console
        redis, instance, app_port = self.redis, self.instance, self.app_port
        c.stage("Starting Modoboa: RQ workers and the application")
        connection = redis.client()
        workers = [
            instance.worker("modoboa", connection, n) for n in range(1, self.modoboa_workers + 1)
        ] + [instance.worker("privileged", connection)]
        app = instance.app_server(app_port)
        # Stopped in reverse: the app, then the modoboa workers (their warm shutdown may
        # finish a chain that still needs a reload), then the privileged worker.
        django_processes: list[DjangoProcess] = [workers[-1], *workers[:-1], app]
        for process in django_processes:
            self._track(process)
        start_all(django_processes)
        api = ModoboaApi(f"http://127.0.0.1:{app_port}", self.token)
        self.api = api
        storage = self.root / "acme"
        api.set_parameters(
            "virtualhosts",
            {
                "enable_letsencrypt": True,
                "acme_account_email": ACCOUNT_EMAIL,
                "acme_account_storage_path": str(storage),
                "certificate_renewal_threshold": 30,
            },
        )
        c.facts(
            [
                ("rqworker modoboa", f"pid {workers[0].pid}  (runs the provisioning chain)"),
                *[
                    ("rqworker modoboa", f"pid {w.pid}  (another chain runner)")
                    for w in workers[1:-1]
                ],
                ("rqworker privileged", f"pid {workers[-1].pid}  (nginx -t + reload)"),
                ("runserver", f"http://127.0.0.1:{app_port}, pid {app.pid}"),
                (
                    "Settings",
                    f"Let's Encrypt on, account {ACCOUNT_EMAIL}, storage {storage}",
                ),
            ]
        )

    def serve_ui(self) -> ui.WebUi:
        """Serve Modoboa's web UI over HTTPS on a loopback port (``--ui``)."""
        c = self.console
        c.stage("Serving Modoboa's web UI over HTTPS (SPA, static files, API)")
        port = free_port()
        ui.prepare_instance(self.instance, f"127.0.0.1:{port}")
        web = ui.start(self.instance, self.app_port, self.root / "ui", port)
        self._track(web.proxy)
        self.log_paths += [web.proxy.error_log_path, web.proxy.access_log_path]
        c.facts(
            [
                ("manage.py collectstatic", "ok (the plugin's page is in sitestatic/virtualhosts)"),
                ("load_initial_data", "--relative-urls-in-config, then add_allowed_hosts"),
                ("nginx", f"{web.origin}, pid {web.proxy.pid}"),
            ]
        )
        return web

    def provision(self) -> bool:
        c = self.console
        api, instance, nginx, pebble_root = self.api, self.instance, self.nginx, self.pebble_root
        app_port, token = self.app_port, self.token
        c.stage("Creating virtual hosts through the REST API")
        hosts: list[dict[str, Any]] = []
        for hostname in self.hostnames:
            host = api.create_virtualhost(hostname)
            hosts.append(host)
            c.info(
                f"POST /api/v2/virtualhosts/ {{'hostname': {hostname!r}}} -> 201, "
                f"id {host['id']}, status {host['status']}"
            )
        c.info("")
        latest = follow(
            c,
            api,
            hosts,
            DatabaseHistory(instance),
            timeout=PROVISION_TIMEOUT,
            on_wait=self._check_alive,
        )

        c.stage("What nginx serves now")
        final = [latest[h["id"]] for h in hosts]
        c.table(
            ["hostname", "status", "issuer", "expires (UTC)", "serial"],
            [
                [
                    h["hostname"],
                    h["status"],
                    cert.get("issuer") or "-",
                    _short_date(cert.get("not_after")),
                    cert.get("serial") or "-",
                ]
                for h, cert in ((h, certificate_of(h)) for h in final)
            ],
        )
        active = [h for h in final if h["status"] == "active"]
        for host in active:
            proof = openssl_proof(host["hostname"], nginx.https_port, pebble_root)
            c.info("")
            c.info(f"$ {proof.command}")
            c.facts(
                [
                    ("subject", proof.subject),
                    ("issuer", proof.issuer),
                    ("verify", proof.verify),
                ]
            )
        if active:
            hostname = active[0]["hostname"]
            answer = https_get(
                hostname,
                nginx.https_port,
                "/api/v2/virtualhosts/",
                cafile=pebble_root,
                headers={"Authorization": f"Token {token}"},
            )
            c.info("")
            c.info(f"$ GET https://{hostname}:{nginx.https_port}/api/v2/virtualhosts/  (via nginx)")
            c.facts(
                [
                    ("answer", f"HTTP {answer.status}, {answer.content_type}"),
                    ("served by", f"{answer.server or 'nginx'} -> Modoboa at 127.0.0.1:{app_port}"),
                    ("body", _summary(answer.body)),
                ]
            )
            if answer.status != 200:
                raise DemoError(f"Modoboa did not answer through nginx: HTTP {answer.status}")
        missing = [h["hostname"] for h in final if h["status"] != "active"]
        if missing:
            for host in final:
                if host["status"] != "active":
                    c.info("")
                    c.info(
                        f"{host['hostname']} is {host['status']}"
                        + (f": {host['last_error']}" if host.get("last_error") else "")
                    )
            return False
        return True


def certificate_of(payload: dict[str, Any]) -> dict[str, Any]:
    """Certificate facts of an API payload: nested ``certificate`` or flat ``cert_*`` fields."""
    nested = payload.get("certificate")
    if isinstance(nested, dict):
        return nested
    return {
        key: payload.get(f"cert_{key}")
        for key in ("serial", "issuer", "not_before", "not_after")
        if payload.get(f"cert_{key}")
    }


def _short_date(value: Any) -> str:
    if not value:
        return "-"
    return str(value).replace("T", " ")[:16]


def _summary(body: str) -> str:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:80] if body.strip() else "(empty)"
    results = data.get("results", data) if isinstance(data, dict) else data
    if isinstance(results, list):
        names = ", ".join(str(r.get("hostname")) for r in results if isinstance(r, dict))
        return f"JSON list of {len(results)} virtual hosts: {names}"
    return json.dumps(data)[:80]


def _show_ui(console: Console, web: ui.WebUi) -> None:
    user, password = ui.ADMIN_LOGIN
    console.line()
    console.line(f"Modoboa's web UI: {web.origin}/")
    console.line(f"    log in as {user} / {password}, then click 'Virtual hosts' in the menu")
    console.line("    (the certificate is from a throwaway CA: accept it in the browser, or trust")
    console.line(f"    {web.ca_path}; plugin pages cannot be bookmarked in Modoboa 2.12).")
    console.line("Everything keeps running until you press Ctrl-C.")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modoboa_pro.demo",
        description="Deploy a throwaway Modoboa with modoboa_pro on loopback and watch two "
        "virtual hosts get HTTPS certificates from a local ACME CA (Pebble).",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (instance, logs, certificates) after a success",
    )
    parser.add_argument(
        "--ui",
        action="store_true",
        help="then serve Modoboa's web UI over HTTPS on a loopback port and keep everything "
        "running until Ctrl-C (prints the URL and the login)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to put everything (default: a new temporary directory)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    console = Console(stages=STAGES)
    console.title("modoboa_pro demo: automatic HTTPS for Modoboa virtual hosts")
    console.line(
        "Everything runs on 127.0.0.1 and is stopped at the end; Pebble plays Let's Encrypt."
    )
    missing = _missing_binaries()
    if missing:
        console.line()
        console.line(f"Missing programs: {', '.join(missing)}.")
        console.line(f"Install them with: apt-get install {' '.join(missing)}  (or run make demo)")
        return 2

    if args.workdir:
        root = args.workdir.absolute()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="modoboa-pro-demo-"))
    # Unix socket paths are limited to 107 bytes: keep the root short.
    demo = Demo(console, root, HOSTNAMES)
    if args.ui:
        console.stages += 1
    previous = {
        sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    # Started in the background by a shell, Python inherits an ignored SIGINT: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ok = False
    problem = ""
    try:
        ok = demo.run()
        if not ok:
            problem = "a virtual host did not become active"
        elif args.ui:
            _show_ui(console, demo.serve_ui())
            demo.wait()
    except KeyboardInterrupt:
        problem = "interrupted"
    except _Terminated as err:
        problem = f"stopped by {err}"
    except (DemoError, HarnessError) as err:
        problem = str(err)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        console.line()
        stopped = demo.stop_all()
        console.line(f"Stopped everything the demo started: {', '.join(stopped)}.")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    elapsed = console.elapsed()
    if ok:
        console.line(
            f"Done in {elapsed:.0f}s: {len(HOSTNAMES)} virtual hosts served over HTTPS "
            "with certificates issued through the plugin."
        )
        if args.keep or args.workdir:
            console.line(f"Everything is kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    console.line()
    console.line(f"FAILED after {elapsed:.0f}s: {problem}")
    console.line(f"Logs are kept in {root}:")
    for path in demo.log_paths:
        with contextlib.suppress(OSError):
            if path.exists():
                console.line(f"    {path}")
    return 1

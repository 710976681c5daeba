"""Real Redis, Pebble and nginx processes on loopback, each confined to its own work directory."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple, Self

import redis
import requests

from modoboa_pro.testing import pki
from modoboa_pro.virtualhosts.adapters import nginx as nginx_adapter
from modoboa_pro.virtualhosts.adapters import nginx_processes

# Longest path a unix socket accepts on Linux (sun_path is 108 bytes with the final NUL).
_MAX_SOCKET_PATH = 107
_POLL_INTERVAL = 0.02


class HarnessError(RuntimeError):
    """A server did not start, stop or reload; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _binary(name: str, fallback: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin") or fallback


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid``, deepest first (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of stat is the parent's PID; the command name (2) may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found[::-1]


class ManagedProcess:
    """A program run in the foreground as our child, stopped by its PID only.

    Subclasses write their configuration in :meth:`prepare`, give the :meth:`command` and say
    when they are :meth:`ready`. The child gets its own session, so a Ctrl-C aimed at the test
    run does not kill it before teardown, and a forced stop can reach its workers through the
    process group it leads (never anything else).
    """

    name = "process"
    start_timeout = 15.0
    stop_timeout = 10.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- hooks ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write configuration files before the process starts."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def ready(self) -> bool:
        raise NotImplementedError

    def log_tails(self) -> str:
        """What to show when something goes wrong."""
        return f"--- {self.log_path} ---\n{_tail(self.log_path)}"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self.prepare()
        cmd = self.command()
        self._log = open(self.log_path, "ab")  # closed by stop(): it outlives this call
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            self._close_log()
            raise HarnessError(f"{self.name}: cannot run {cmd[0]}: {err}") from err
        # The demo script may exit without calling stop(); never leave a server behind.
        atexit.register(self.stop)
        self._wait(self.ready, self.start_timeout, "start")
        return self

    def _wait(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        stop_on_timeout: bool = True,
    ) -> None:
        """Poll ``condition`` until true; raise with the log tail if the process dies first."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                self.stop()
                raise HarnessError(
                    f"{self.name} exited (code {code}) during {what}\n{self.log_tails()}"
                )
            try:
                if condition():
                    return
                last_error = None
            except HarnessError:
                raise
            except Exception as err:  # noqa: BLE001 - probes fail until the server is up
                last_error = err
            if time.monotonic() > deadline:
                if stop_on_timeout:
                    self.stop()
                detail = f" (last probe error: {last_error!r})" if last_error else ""
                raise HarnessError(
                    f"{self.name} did not {what} within {timeout:.0f}s{detail}\n"
                    f"command: {' '.join(self.command())}\n{self.log_tails()}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """SIGTERM our PID, wait, then SIGKILL its process group; safe to call repeatedly."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                # The child leads its own session (start_new_session), so its group is exactly
                # its own descendants: the only way to also reach orphaned nginx workers.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout)
        self._close_log()

    def crash(self) -> int:
        """SIGKILL the process and all it started at once, as an OOM kill or a power cut
        would (no handler runs); reap it and return its PID."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise HarnessError(f"{self.name} is not running")
        atexit.unregister(self.stop)
        # RQ's work horse leads a process group of its own: find it by parentage.
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=self.stop_timeout)  # reaped: no zombie keeps its PID alive
        self._close_log()
        return proc.pid

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Redis's own snapshot rules when redis.conf sets none, as a Debian redis-server runs:
# after an hour with one change, 5 minutes with 100, a minute with 10,000, and at shutdown.
DEFAULT_SAVE_POINTS = "3600 1 300 100 60 10000"


class RedisServer(ManagedProcess):
    """``redis-server`` reachable only through a unix socket.

    Without persistence by default: a restart (``stop`` then ``start``) loses every key,
    as a crash of a Redis without persistence does. ``persistent=True`` uses Redis's
    default snapshots: a clean stop saves ``dump.rdb``, the next start loads it.
    """

    name = "redis"

    def __init__(
        self, workdir: Path, *, socket_path: Path | None = None, persistent: bool = False
    ) -> None:
        super().__init__(workdir)
        self.socket_path = Path(socket_path or self.workdir / "redis.sock").absolute()
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise HarnessError(f"unix socket path too long for Linux: {self.socket_path}")
        self.conf_path = self.workdir / "redis.conf"
        self.dump_path = self.workdir / "dump.rdb"
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), db=db)

    def prepare(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.persistent:
            # Redis loads a snapshot it finds whatever its save rules: start empty.
            with contextlib.suppress(FileNotFoundError):
                self.dump_path.unlink()
        # Jobs are pickled: whoever reaches Redis runs code in the workers, hence no TCP and a
        # socket only we can open.
        self.conf_path.write_text(
            "\n".join(
                [
                    "port 0",
                    f'unixsocket "{self.socket_path}"',
                    "unixsocketperm 700",
                    f"save {DEFAULT_SAVE_POINTS}" if self.persistent else 'save ""',
                    f'dbfilename "{self.dump_path.name}"',
                    "appendonly no",
                    "daemonize no",
                    f'dir "{self.workdir}"',
                    'logfile ""',
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        return [_binary("redis-server", "/usr/bin/redis-server"), str(self.conf_path)]

    def ready(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        super().stop()
        # A killed server leaves its socket file; a stale one would fool the next ping.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


class PebbleServer(ManagedProcess):
    """Pebble, the test ACME server, with its own throwaway TLS CA.

    Every HTTP-01 validation fetches ``http://<name>:<http_port>/...`` with names resolved by
    the DNS server at ``dns_address`` (see :class:`~modoboa_pro.testing.dns.DnsResponder`).
    """

    name = "pebble"

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        dns_address: str,
        nonce_reject_percent: int = 0,
        validity_seconds: int = 0,
        tls_port: int | None = None,
        authz_reuse_percent: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.http_port = http_port
        self.dns_address = dns_address
        self.nonce_reject_percent = nonce_reject_percent
        self.validity_seconds = validity_seconds
        self.tls_port = tls_port if tls_port is not None else free_port()
        self.authz_reuse_percent = authz_reuse_percent
        self.extra_env = dict(env or {})  # e.g. PEBBLE_CHAIN_LENGTH
        self.port = free_port()
        self.management_port = free_port()
        self.conf_path = self.workdir / "pebble-config.json"
        self.ca_bundle, self._ca_key = pki.make_ca(
            self.workdir, common_name="Pebble HTTPS test CA", stem="pebble-https-ca"
        )
        self.cert_path, self.key_path = pki.make_server_cert(
            self.workdir, self.ca_bundle, self._ca_key, stem="pebble-https"
        )

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def prepare(self) -> None:
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.cert_path),
            "privateKey": str(self.key_path),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds > 0:
            config["certificateValidityPeriod"] = self.validity_seconds
        self.conf_path.write_text(json.dumps({"pebble": config}, indent=2))

    def command(self) -> list[str]:
        # Never "-strict false": Go reads it as -strict followed by a stray argument.
        return [
            _binary("pebble", "/usr/bin/pebble"),
            "-config",
            str(self.conf_path),
            "-dnsserver",
            self.dns_address,
        ]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            # Without it every validation fetch first sleeps up to several seconds.
            "PEBBLE_VA_NOSLEEP": "1",
            # Pebble's defaults (5 % bad nonces, 50 % authz reuse) make tests flaky or vacuous.
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject_percent),
            "PEBBLE_AUTHZREUSE": str(self.authz_reuse_percent),
            **self.extra_env,
        }

    def ready(self) -> bool:
        response = requests.get(self.directory_url, verify=str(self.ca_bundle), timeout=2)
        return response.status_code == 200 and "newOrder" in response.json()

    def _management_pem(self, path: str) -> bytes:
        response = requests.get(
            f"{self.management_url}{path}", verify=str(self.ca_bundle), timeout=5
        )
        response.raise_for_status()
        return response.content

    def issuing_roots_pem(self) -> bytes:
        """PEM of the root Pebble issues under; regenerated at every start."""
        return self._management_pem("/roots/0")

    def issuing_intermediates_pem(self) -> bytes:
        """PEM of the intermediate between that root and issued leaves."""
        return self._management_pem("/intermediates/0")


class AccessLogEntry(NamedTuple):
    host: str
    method: str
    uri: str
    status: int
    user_agent: str
    server_port: int


# Tab-separated: nginx escapes control characters and quotes inside variables, so a tab can only
# be a separator.
_LOG_FORMAT = "$host\\t$request_method\\t$request_uri\\t$status\\t$http_user_agent\\t$server_port"
_FATAL_LINE = re.compile(rb"\[emerg\][^\n]*")


# nginx's worker processes in every harness nginx: more children mean a reload hands over.
WORKER_PROCESSES = 1


class NginxServer(ManagedProcess):
    """nginx with its own prefix, pid file and logs, serving ``sites_dir/*.conf``.

    With no site it still starts: a default server answers 404 on ``http_port`` and rejects
    TLS handshakes on ``https_port``, like a fresh host.
    """

    name = "nginx"

    def __init__(
        self, workdir: Path, *, http_port: int | None = None, https_port: int | None = None
    ) -> None:
        super().__init__(workdir)
        self.http_port = http_port if http_port is not None else free_port()
        self.https_port = https_port if https_port is not None else free_port()
        self.sites_dir = self.workdir / "sites"
        self.sites_dir.mkdir(exist_ok=True)
        self.conf_path = self.workdir / "nginx.conf"
        self.pid_path = self.workdir / "nginx.pid"
        self.error_log_path = self.workdir / "error.log"
        self.access_log_path = self.workdir / "access.log"
        self.binary = _binary("nginx", "/usr/sbin/nginx")

    def _base_command(self) -> list[str]:
        # -e: without it nginx first opens its compiled-in /var/log/nginx/error.log.
        return [
            self.binary,
            "-p",
            str(self.workdir),
            "-e",
            str(self.error_log_path),
            "-c",
            str(self.conf_path),
        ]

    @property
    def test_command(self) -> list[str]:
        return [*self._base_command(), "-t"]

    @property
    def reload_command(self) -> list[str]:
        return [*self._base_command(), "-s", "reload"]

    def command(self) -> list[str]:
        return self._base_command()

    def prepare(self) -> None:
        temp = self.workdir / "temp"
        temp_dirs = {}
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / kind).mkdir(parents=True, exist_ok=True)
            temp_dirs[kind] = temp / kind
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()  # readiness waits for a fresh one
        # As root, workers would run as "nobody" and could not read the tests' temp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            f"""# Written by modoboa_pro.testing.NginxServer
{user}daemon off;
master_process on;
worker_processes {WORKER_PROCESSES};
pid {self.pid_path};
error_log {self.error_log_path} info;
events {{
    worker_connections 256;
}}
http {{
    default_type application/octet-stream;
    log_format harness "{_LOG_FORMAT}";
    access_log {self.access_log_path} harness;
    client_body_temp_path {temp_dirs["client_body"]};
    proxy_temp_path {temp_dirs["proxy"]};
    fastcgi_temp_path {temp_dirs["fastcgi"]};
    uwsgi_temp_path {temp_dirs["uwsgi"]};
    scgi_temp_path {temp_dirs["scgi"]};
    # What docs/nginx.md asks operators for: long host names, many hosts.
    server_names_hash_bucket_size {nginx_adapter.SERVER_NAMES_HASH_BUCKET_SIZE};
    server_names_hash_max_size {nginx_adapter.SERVER_NAMES_HASH_MAX_SIZE};
    server {{
        listen 127.0.0.1:{self.http_port} default_server;
        server_name _;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{self.https_port} ssl default_server;
        server_name _;
        ssl_reject_handshake on;
    }}
    include {self.sites_dir}/*.conf;
}}
"""
        )

    def ready(self) -> bool:
        return self.pid_path.exists() and _tcp_open("127.0.0.1", self.http_port)

    def log_tails(self) -> str:
        return f"{super().log_tails()}\n--- {self.error_log_path} ---\n{_tail(self.error_log_path)}"

    # -- logs -------------------------------------------------------------------------------

    def access_log_lines(self) -> list[str]:
        """Raw access log lines: host, method, URI, status, user agent, port (tab-separated)."""
        try:
            return self.access_log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def access_log_entries(self) -> list[AccessLogEntry]:
        entries = []
        for line in self.access_log_lines():
            host, method, uri, status, agent, port = line.split("\t")
            entries.append(AccessLogEntry(host, method, uri, int(status), agent, int(port)))
        return entries

    # -- reloads ----------------------------------------------------------------------------

    def workers(self) -> set[nginx_processes.Worker]:
        """The master's current children (its worker processes)."""
        return nginx_processes.workers(self._proc.pid) if self._proc is not None else set()

    @contextlib.contextmanager
    def expect_reload(self, timeout: float = 10.0) -> Iterator[None]:
        """Wait, after the block, until a reload done inside it has replaced every worker.

        ``nginx -s reload`` returns as soon as the signal is sent; new requests may still reach
        old workers until they exit. A rejected configuration raises with the log's error.
        """
        old_workers = self.workers()
        offset = self.error_log_path.stat().st_size if self.error_log_path.exists() else 0
        yield

        def replaced() -> bool:
            with open(self.error_log_path, "rb") as log:
                log.seek(offset)
                text = log.read()
            errors = _FATAL_LINE.findall(text)
            if errors:
                raise HarnessError(
                    "nginx rejected the reload:\n" + b"\n".join(errors).decode(errors="replace")
                )
            # The master must have handled the signal (under load it may lag), and
            # every worker that could still hold the old configuration must be gone.
            if b"reconfiguring" not in text:
                return False
            current = self.workers()
            return bool(current) and not current & old_workers

        # A failed reload leaves nginx serving the old configuration: keep it running.
        self._wait(replaced, timeout, "reload", stop_on_timeout=False)

    def reload(self, timeout: float = 10.0) -> None:
        """``nginx -s reload`` (as the application does) and wait until it took effect."""
        with self.expect_reload(timeout):
            result = subprocess.run(
                self.reload_command, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise HarnessError(f"nginx -s reload failed:\n{result.stderr}")


class PostgresServer(ManagedProcess):
    """A throwaway PostgreSQL cluster on a free loopback port, trust authentication.

    PostgreSQL refuses to run as root: as root, ``initdb`` and the server run as the
    ``postgres`` user (Debian's package creates it), and the data directory lives in a
    directory of its own under the system's temporary directory, which that user can reach
    (pytest's temporary directories are private to root).
    """

    name = "postgres"
    start_timeout = 30.0
    superuser = "postgres"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self._data_parent: Path | None = None

    @property
    def data_dir(self) -> Path:
        if self._data_parent is None:
            if os.geteuid() == 0:
                self._data_parent = Path(tempfile.mkdtemp(prefix="modoboa-pro-pg-"))
                shutil.chown(self._data_parent, self.superuser, self.superuser)
            else:
                self._data_parent = self.workdir
        return self._data_parent / "data"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        # setpriv execs (no child process in between): our PID is the server's.
        setpriv = _binary("setpriv", "/usr/bin/setpriv")
        return [setpriv, "--reuid", self.superuser, "--regid", self.superuser,
                "--init-groups", "--", *argv]  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgres://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        initdb = [_pg_binary("initdb"), "-D", str(self.data_dir), "-U", self.superuser,
                  "--auth=trust", "--encoding=UTF8", "--no-locale"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            done = subprocess.run(  # noqa: S603 - fixed arguments
                self._as_owner(initdb), stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            raise HarnessError(f"initdb failed (exit {done.returncode})\n{self.log_tails()}")

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "100",
            # A throwaway cluster: durability buys nothing here and costs the 2-core CI.
            "fsync": "off",
            "synchronous_commit": "off",
        }
        options = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        argv = [_pg_binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        return self._as_owner([*argv, *options])

    def ready(self) -> bool:
        with self.connect("postgres"):
            return True

    def connect(self, database: str):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname=database,
            connect_timeout=2, autocommit=True,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier we choose); return its URL."""
        from psycopg import sql

        with self.connect("postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave;
        # SIGINT is the "fast" one, right for a throwaway cluster.
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout)
        super().stop()
        if self._data_parent is not None and self._data_parent != self.workdir:
            shutil.rmtree(self._data_parent, ignore_errors=True)
            self._data_parent = None


def _pg_binary(name: str) -> str:
    """Debian keeps PostgreSQL's server programs in /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise HarnessError(f"{name} not found: install Debian's postgresql package")
    return str(versions[-1])

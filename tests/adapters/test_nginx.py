"""Tests for the nginx adapter, against a real nginx master started per test."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts.adapters import nginx, nginx_processes
from modoboa_pro.virtualhosts.errors import (
    ConfigurationError,
    InvalidHostname,
    NginxConfigTestFailed,
    NginxError,
    NginxReloadFailed,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")

MAIN_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} default_server;
        return 404;
    }}
    include {prefix}/sites/*.conf;
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class NginxServer:
    """A private nginx: its own prefix, config, pid file and port; sites in ``sites/``."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.sites = prefix / "sites"
        self.conf = prefix / "nginx.conf"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.sites.mkdir(parents=True)
        (prefix / "tmp").mkdir()
        self.conf.write_text(MAIN_CONF.format(prefix=prefix, port=self.port))

    def argv(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr", *extra]

    @property
    def test_argv(self) -> list[str]:
        return self.argv("-t")

    @property
    def reload_argv(self) -> list[str]:
        return self.argv("-s", "reload")

    def start(self) -> None:
        with open(self.prefix / "master.log", "wb") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        # The listening socket opens before the master writes its pid file and starts its
        # worker: wait for both, as a running nginx is found (CI once read no pid file yet).
        deadline = time.monotonic() + 10
        master = self.process.pid
        while not (
            nginx_processes.read_master(self.prefix / "nginx.pid") == master
            and nginx_processes.workers(master)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("nginx wrote no pid file or started no worker within 10 s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)  # fast shutdown of this master only
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def wait_for_answer(self, host: str, status: int, body: str | None = None) -> None:
        """Poll until ``host`` answers ``status`` (and ``body``) several times in a row.

        A reload is asynchronous: for a moment an old worker may still accept a
        connection after a new one answered, so one matching answer proves little.
        """
        deadline = time.monotonic() + 10
        streak, seen = 0, None
        while streak < 5:
            if time.monotonic() > deadline:
                raise AssertionError(f"{host} still answers {seen!r}, expected {status} {body!r}")
            seen = self.get(host)
            matches = seen[0] == status and (body is None or seen[1] == body)
            streak = streak + 1 if matches else 0
            time.sleep(0.02)


@pytest.fixture
def nginx_server(tmp_path) -> Iterator[NginxServer]:
    server = NginxServer(tmp_path / "nginx")
    try:
        yield server
    finally:
        server.stop()


def site(port: int, hostname: str, body: str) -> str:
    return (
        f"server {{\n    listen 127.0.0.1:{port};\n    server_name {hostname};\n"
        f'    default_type text/plain;\n    return 200 "{body}";\n}}\n'
    )


# -- site files ----------------------------------------------------------------


def test_site_path(tmp_path):
    assert nginx.site_path(tmp_path, "a.example") == tmp_path / "a.example.conf"
    for bad in ("../a", "a/b", ".a", "a b", "a;b", ""):
        with pytest.raises(InvalidHostname):
            nginx.site_path(tmp_path, bad)


def test_hostname_file_names_are_the_site_and_its_temporary_file(tmp_path):
    site, temp = nginx.hostname_file_names("a.example")
    assert site == nginx.site_path(tmp_path, "a.example").name == "a.example.conf"
    assert temp.startswith(".a.example.conf.") and temp.endswith(".tmp")


def test_write_restore_round_trip(tmp_path):
    path = tmp_path / "a.example.conf"
    assert nginx.write_site(tmp_path, "a.example", "first") is None
    assert path.read_text() == "first"
    assert os.stat(path).st_mode & 0o777 == 0o644

    previous = nginx.write_site(tmp_path, "a.example", "second")
    assert previous == b"first"
    nginx.restore_site(tmp_path, "a.example", previous)
    assert path.read_text() == "first"

    nginx.restore_site(tmp_path, "a.example", None)
    assert not path.exists()
    nginx.restore_site(tmp_path, "a.example", None)  # nothing to remove: fine
    assert list(tmp_path.iterdir()) == []


def test_remove_site(tmp_path):
    nginx.write_site(tmp_path, "a.example", "content")
    removed = nginx.remove_site(tmp_path, "a.example")
    assert removed == b"content"
    assert not (tmp_path / "a.example.conf").exists()
    assert nginx.remove_site(tmp_path, "a.example") is None
    nginx.restore_site(tmp_path, "a.example", removed)
    assert (tmp_path / "a.example.conf").read_text() == "content"


def test_write_site_missing_conf_dir(tmp_path):
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_NGINX_CONF_DIR"):
        nginx.write_site(tmp_path / "missing", "a.example", "x")


# -- commands ------------------------------------------------------------------


def test_run_test_accepts_valid_site(nginx_server):
    nginx.write_site(nginx_server.sites, "a.test", site(nginx_server.port, "a.test", "one"))
    output = nginx.run_test(nginx_server.test_argv)
    assert "syntax is ok" in output


def test_run_test_quotes_emerg_line(nginx_server):
    nginx.write_site(nginx_server.sites, "a.test", "server { bogus_directive on; }\n")
    with pytest.raises(NginxConfigTestFailed) as info:
        nginx.run_test(nginx_server.test_argv)
    error = info.value
    assert "[emerg]" in str(error)
    assert '[emerg] unknown directive "bogus_directive"' in str(error)  # no time/pid noise
    assert "previous configuration is still in place" in str(error)
    assert "test failed" in error.output
    assert error.retryable is False


def test_long_names_on_stock_hash_sizes_fail_with_the_fix(nginx_server):
    """nginx's default server-name buckets hold ~46 characters (64-byte cache lines)."""
    name = ".".join(["a" * 63] * 3)  # 191 characters: over any default bucket size
    nginx.write_site(nginx_server.sites, name, site(nginx_server.port, name, "one"))
    with pytest.raises(NginxConfigTestFailed) as info:
        nginx.run_test(nginx_server.test_argv)
    message = str(info.value)
    assert "could not build server_names_hash" in message
    assert f"server_names_hash_bucket_size {nginx.SERVER_NAMES_HASH_BUCKET_SIZE};" in message
    assert "docs/nginx.md" in message


def test_missing_binary_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_NGINX_TEST_COMMAND") as info:
        nginx.run_test(["/nonexistent/nginx", "-t"])
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(ConfigurationError, match="VIRTUALHOSTS_NGINX_RELOAD_COMMAND"):
        nginx.run_reload(["/nonexistent/nginx", "-s", "reload"])
    with pytest.raises(ConfigurationError):
        nginx.run_test([])


def test_timeout_is_retryable():
    start = time.monotonic()
    with pytest.raises(NginxError, match="did not finish") as info:
        nginx.run_test(["sleep", "5"], timeout=0.2)
    assert time.monotonic() - start < 4
    assert info.value.retryable is True
    assert not isinstance(info.value, NginxConfigTestFailed)


def test_reload_without_running_master_fails(nginx_server):
    # Not started: there is no pid file, as when the service is down.
    with pytest.raises(NginxReloadFailed) as info:
        nginx.run_reload(nginx_server.reload_argv)
    message = str(info.value)
    assert "nginx.pid" in message
    assert "VIRTUALHOSTS_NGINX_RELOAD_COMMAND" in message
    assert "previous configuration" in message
    assert info.value.retryable is True


def test_reload_changes_what_nginx_serves(nginx_server):
    nginx_server.start()
    assert nginx_server.get("a.test")[0] == 404

    nginx.write_site(nginx_server.sites, "a.test", site(nginx_server.port, "a.test", "one"))
    nginx.test_and_reload(nginx_server.test_argv, nginx_server.reload_argv)
    nginx_server.wait_for_answer("a.test", 200, "one")

    previous = nginx.write_site(
        nginx_server.sites, "a.test", site(nginx_server.port, "a.test", "two")
    )
    nginx.test_and_reload(nginx_server.test_argv, nginx_server.reload_argv)
    nginx_server.wait_for_answer("a.test", 200, "two")

    # A broken site is refused before any reload; restoring the previous file
    # leaves nginx exactly as it was.
    previous = nginx.write_site(nginx_server.sites, "a.test", "server { bogus_directive; }\n")
    with pytest.raises(NginxConfigTestFailed):
        nginx.test_and_reload(nginx_server.test_argv, nginx_server.reload_argv)
    nginx.restore_site(nginx_server.sites, "a.test", previous)
    nginx.run_test(nginx_server.test_argv)
    assert nginx_server.get("a.test") == (200, "two")

    nginx.remove_site(nginx_server.sites, "a.test")
    nginx.test_and_reload(nginx_server.test_argv, nginx_server.reload_argv)
    nginx_server.wait_for_answer("a.test", 404)


# -- a reload returns once it has taken over -----------------------------------------


def answers_right_after(server: NginxServer, body: str, *, pid_file: Path | None) -> list[str]:
    """Reload to a site answering ``body``, then ask on fresh connections at once."""
    nginx.write_site(server.sites, "a.test", site(server.port, "a.test", body))
    nginx.run_reload(server.reload_argv, pid_file=pid_file)
    return [server.get("a.test")[1] for _ in range(40)]


def test_a_reload_returns_once_no_old_worker_accepts(nginx_server):
    """The command returns before nginx's old workers stop accepting (~100 ms later): with
    the pid file, the reload waits for them, so the very next connections get the new site."""
    nginx_server.start()
    pid_file = nginx_server.prefix / "nginx.pid"
    master = nginx_processes.read_master(pid_file)
    assert master == nginx_server.process.pid

    for generation in range(5):
        old = nginx_processes.workers(master)
        answers = answers_right_after(nginx_server, f"gen{generation}", pid_file=pid_file)
        assert answers == [f"gen{generation}"] * len(answers)
        # The workers that served before the reload have exited or are shutting down.
        assert all(nginx_processes.is_retiring(worker) for worker in old)
        assert nginx_processes.workers(master) - old


def test_the_workers_are_the_same_without_the_kernels_children_lists(nginx_server, monkeypatch):
    """Read from the master's children lists where the kernel keeps them, from every
    process's status otherwise: the same workers either way."""
    nginx_server.start()
    master = nginx_processes.read_master(nginx_server.prefix / "nginx.pid")
    assert master is not None
    listed = nginx_processes.workers(master)
    assert listed and nginx_processes._children(master) == {w.pid for w in listed}
    monkeypatch.setattr(nginx_processes, "_children", lambda master: None)
    assert nginx_processes.workers(master) == listed


def test_without_the_pid_file_old_workers_still_answer_after_the_command(nginx_server):
    """Why the wait exists: right after the command, the old generation still accepts."""
    nginx_server.start()
    stale = []
    for generation in range(5):
        answers = answers_right_after(nginx_server, f"gen{generation}", pid_file=None)
        stale += [a for a in answers if a != f"gen{generation}"]
        nginx_server.wait_for_answer("a.test", 200, f"gen{generation}")
    assert stale  # old workers answered with the previous site


def test_a_reload_nginx_does_not_apply_is_reported(nginx_server, monkeypatch):
    """The command succeeded, but the master refused the configuration (here a port that
    another program holds, which only the master finds out): the old workers stay, and
    the reload says so instead of claiming success."""
    nginx_server.start()
    pid_file = nginx_server.prefix / "nginx.pid"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        nginx.write_site(nginx_server.sites, "b.test", site(port, "b.test", "never"))
        monkeypatch.setattr(nginx_processes, "TAKEOVER_TIMEOUT", 1.0)
        with pytest.raises(NginxReloadFailed) as info:
            nginx.run_reload(nginx_server.reload_argv, pid_file=pid_file)
    message = str(info.value)
    assert f"master PID {nginx_server.process.pid}" in message
    assert "did not apply the new configuration" in message
    assert "VIRTUALHOSTS_NGINX_PID_FILE" in message
    assert nginx_server.get("b.test")[0] == 404  # still serving the previous configuration


def test_nginx_own_reload_is_a_sighup_to_the_master_it_watches(nginx_server):
    """``nginx -s reload`` reads the whole configuration only to find the master: with the
    master known from the pid file, SIGHUP goes to it directly, and the reload is the same."""
    nginx_server.start()
    pid_file = nginx_server.prefix / "nginx.pid"
    log = nginx_server.prefix / "error.log"
    offset = log.stat().st_size
    answers = answers_right_after(nginx_server, "signalled", pid_file=pid_file)
    assert answers == ["signalled"] * len(answers)
    with open(log, "rb") as lines:
        lines.seek(offset)
        logged = lines.read()
    assert logged.count(b"(SIGHUP) received") == 1
    assert b"signal process started" not in logged  # no `nginx -s` process ran


@pytest.mark.parametrize(
    ("argv", "signalled"),
    [
        (["nginx", "-s", "reload"], True),
        (
            ["/usr/sbin/nginx", "-p", "/srv/nginx", "-c", "/srv/nginx/nginx.conf", "-s", "reload"],
            True,
        ),
        (["/usr/bin/systemctl", "reload", "nginx"], False),  # systemd's own way: run as given
        (["sudo", "nginx", "-s", "reload"], False),
        (["nginx", "-s", "reopen"], False),
        (["/usr/local/bin/reload-nginx-everywhere"], False),
    ],
)
def test_only_nginx_own_reload_command_is_replaced_by_the_signal(argv, signalled):
    assert nginx.signals_master(argv) is signalled


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (ProcessLookupError(3, "No such process"), "exited just before it was told to reload"),
        (PermissionError(1, "Operation not permitted"), "Run the privileged worker as root"),
    ],
)
def test_a_master_that_cannot_be_signalled_fails_the_reload_saying_why(
    nginx_server, monkeypatch, error, says
):
    nginx_server.start()

    def refuse(pid: int, signum: int) -> None:
        raise error

    # Only around the reload: the fixture stops nginx with os.kill.
    with monkeypatch.context() as patched, pytest.raises(NginxReloadFailed, match=says) as info:
        patched.setattr(os, "kill", refuse)
        nginx.run_reload(nginx_server.reload_argv, pid_file=nginx_server.prefix / "nginx.pid")
    assert str(nginx_server.process.pid) in str(info.value)


def test_a_pid_file_that_names_no_nginx_master_is_ignored(tmp_path):
    pid_file = tmp_path / "nginx.pid"
    assert nginx_processes.read_master(pid_file) is None  # missing
    pid_file.write_text("garbage\n")
    assert nginx_processes.read_master(pid_file) is None
    pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not nginx (a stale file)
    assert nginx_processes.read_master(pid_file) is None
    # The command alone then decides, as without a pid file.
    with pytest.raises(NginxReloadFailed, match="exit 1"):
        nginx.run_reload(["false"], pid_file=pid_file)


# -- which file `nginx -t` blames ---------------------------------------------------


def test_failing_file_names_a_site_with_its_line(nginx_server):
    nginx.write_site(nginx_server.sites, "a.test", "server { bogus_directive on; }\n")
    with pytest.raises(NginxConfigTestFailed) as info:
        nginx.run_test(nginx_server.test_argv)
    assert nginx.failing_file(info.value.output) == nginx_server.sites / "a.test.conf"


@pytest.mark.parametrize("at_fault", ["fullchain", "privkey", "mismatch"])
def test_failing_file_names_a_certificate_or_key_nginx_cannot_load(nginx_server, at_fault):
    # nginx gives no "in FILE:LINE" for these: the certificate or key is named instead.
    not_before, not_after = validity()
    fullchain, key = make_chain_pem(["a.test"], not_before=not_before, not_after=not_after)
    chain_path, key_path = nginx_server.prefix / "fullchain.pem", nginx_server.prefix / "key.pem"
    chain_path.write_bytes(b"garbage" if at_fault == "fullchain" else fullchain)
    key_path.write_bytes(b"garbage" if at_fault == "privkey" else key)
    if at_fault == "mismatch":
        key_path.write_bytes(
            make_chain_pem(["a.test"], not_before=not_before, not_after=not_after)[1]
        )
    nginx.write_site(
        nginx_server.sites,
        "a.test",
        f"server {{ listen 127.0.0.1:{free_port()} ssl; server_name a.test; "
        f"ssl_certificate {chain_path}; ssl_certificate_key {key_path}; }}\n",
    )
    with pytest.raises(NginxConfigTestFailed) as info:
        nginx.run_test(nginx_server.test_argv)
    expected = chain_path if at_fault == "fullchain" else key_path
    assert nginx.failing_file(info.value.output) == expected


def test_failing_file_without_a_file():
    assert nginx.failing_file("nginx: [emerg] bind() to 0.0.0.0:80 failed (98: in use)") is None
    assert nginx.failing_file("nothing to see") is None

"""Nginx site files (written atomically, restored on failure) and the test / reload commands.

The content comes from ``../rendering.py``, which renders the templates in
``templates/virtualhosts/nginx/``; ``pipeline.apply_site`` writes, tests,
reloads and rolls back; ``reloader.py`` shares reloads between runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from .. import constants
from ..errors import (
    ConfigurationError,
    NginxConfigTestFailed,
    NginxError,
    NginxReloadFailed,
    StorageError,
)
from . import nginx_processes
from .files import atomic_write, longest_temp_name, put_back, safe_hostname

CONF_DIR_SETTING = "VIRTUALHOSTS_NGINX_CONF_DIR"
TEST_COMMAND_SETTING = "VIRTUALHOSTS_NGINX_TEST_COMMAND"
RELOAD_COMMAND_SETTING = "VIRTUALHOSTS_NGINX_RELOAD_COMMAND"
PID_FILE_SETTING = "VIRTUALHOSTS_NGINX_PID_FILE"
# Lines worth quoting to an operator: nginx prefixes its diagnostics with a level.
_DIAGNOSTIC_LEVELS = ("[emerg]", "[alert]", "[crit]", "[error]")
# "2026/01/02 03:04:05 [emerg] 123#123: msg" -> "[emerg] msg": the time and pid add nothing.
_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: ")

# Site files end in ".conf": what the documented `include <dir>/*.conf;` reads.
SITE_SUFFIX = ".conf"
# nginx's server_names_hash_bucket_size defaults to the CPU cache line (64 bytes on x86-64),
# which holds a name of at most 46 characters: a longer one makes `nginx -t` fail with
# "could not build server_names_hash" as soon as two servers share a port. A bucket holds a
# name plus 10 bytes rounded up to 8, plus 8: 256 fits the longest name this plugin accepts
# (232 characters, see hostnames.max_hostname_length); 512 leaves room for collisions.
# docs/nginx.md asks operators for these two lines, and the test harness uses them.
SERVER_NAMES_HASH_BUCKET_SIZE = 512
# nginx's default (512) is enough for a few hundred names; thousands need more.
SERVER_NAMES_HASH_MAX_SIZE = 4096
_HASH_HINT = (
    " nginx needs larger server-name hash tables for long or many host names: add "
    f"'server_names_hash_bucket_size {SERVER_NAMES_HASH_BUCKET_SIZE};' and "
    f"'server_names_hash_max_size {SERVER_NAMES_HASH_MAX_SIZE};' to the http block of "
    "nginx.conf (see the plugin's docs/nginx.md), then retry."
)


def site_filename(hostname: str) -> str:
    """``<hostname>.conf``."""
    return f"{safe_hostname(hostname)}{SITE_SUFFIX}"


def site_path(conf_dir: Path, hostname: str) -> Path:
    """``<conf_dir>/<hostname>.conf``."""
    return Path(conf_dir) / site_filename(hostname)


def hostname_file_names(hostname: str) -> list[str]:
    """Every file name this module derives from ``hostname``, each at its longest.

    The site file and the temporary file it is written through (``files.atomic_write``):
    ``hostnames.py`` refuses a name for which one of these exceeds ``files.NAME_MAX``.
    """
    site = site_filename(hostname)
    return [site, longest_temp_name(site)]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise NginxError(f"Cannot read the nginx site file {path}: {err.strerror}.") from err


def write_site(conf_dir: Path, hostname: str, content: str) -> bytes | None:
    """Atomically install a site file; return the previous content (None if new)."""
    path = site_path(conf_dir, hostname)
    if not Path(conf_dir).is_dir():
        raise ConfigurationError(
            f"The nginx sites directory {conf_dir} does not exist. Create it and make "
            f"nginx include '*.conf' from it, or fix {CONF_DIR_SETTING}."
        )
    previous = _read(path)
    try:
        atomic_write(path, content.encode("utf-8"), constants.PUBLIC_FILE_MODE)
    except StorageError as err:
        raise NginxError(err.message) from err
    return previous


def restore_site(conf_dir: Path, hostname: str, previous: bytes | None) -> None:
    """Put back what ``write_site``/``remove_site`` returned (None removes the file)."""
    path = site_path(conf_dir, hostname)
    try:
        put_back(path, previous, constants.PUBLIC_FILE_MODE)
    except (OSError, StorageError) as err:
        raise NginxError(
            f"Cannot restore the nginx site file {path}: {err}. Fix it by hand before "
            "the next reload.",
        ) from err


def remove_site(conf_dir: Path, hostname: str) -> bytes | None:
    """Delete a site file; return its content (None if there was none)."""
    path = site_path(conf_dir, hostname)
    previous = _read(path)
    if previous is not None:
        restore_site(conf_dir, hostname, None)
    return previous


# nginx names the file of a configuration error: "... in /etc/nginx/sites/x.conf:12".
_ERROR_LOCATION = re.compile(r"\[emerg\].* in (/\S+):(\d+)\s*$")
# ... and a certificate or key it cannot load, without a location: 'cannot load certificate
# "/x/fullchain.pem": ...', 'cannot load certificate key "/x/privkey.pem"',
# 'SSL_CTX_use_PrivateKey("/x/privkey.pem") failed' (a key that does not match).
_UNLOADABLE_FILE = re.compile(
    r'\[emerg\].*?(?:cannot load certificate(?: key)? |SSL_CTX_use_\w+\()"(/[^"]+)"'
)


def failing_file(output: str) -> Path | None:
    """The file ``nginx -t`` blames in ``output`` (its first emergency), if it names one."""
    for line in output.splitlines():
        if "[emerg]" in line:
            match = _ERROR_LOCATION.search(line) or _UNLOADABLE_FILE.search(line)
            return Path(match.group(1)) if match else None
    return None


def _quote(output: str) -> str:
    lines = [_LOG_PREFIX.sub(r"\1 ", line.strip()) for line in output.splitlines() if line.strip()]
    diagnostics = [line for line in lines if any(lvl in line for lvl in _DIAGNOSTIC_LEVELS)]
    return "; ".join(diagnostics or lines[-3:]) or "(no output)"


def _run(argv: list[str], timeout: float, setting: str, what: str) -> tuple[int, str]:
    if not argv:
        raise ConfigurationError(f"{setting} is empty; set it to the {what} command.")
    try:
        done = subprocess.run(  # argv from settings, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream, in the order nginx printed it
            timeout=timeout,
            check=False,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise ConfigurationError(
            f"Cannot run the {what} command {argv[0]!r}: {err.strerror}. Fix {setting}.",
        ) from err
    except subprocess.TimeoutExpired as err:
        output = (err.output or b"").decode("utf-8", "replace")
        raise NginxError(
            f"The {what} command {' '.join(argv)} did not finish within {timeout:g} s; "
            "nginx may be overloaded. It will be retried.",
            output=output,
            retryable=True,
        ) from err
    return done.returncode, done.stdout.decode("utf-8", "replace")


def run_test(argv: list[str], timeout: float = 60) -> str:
    """Run the configuration test (``nginx -t``); return its output."""
    code, output = _run(argv, timeout, TEST_COMMAND_SETTING, "nginx configuration test")
    if code != 0:
        hint = _HASH_HINT if "server_names_hash" in output else ""
        raise NginxConfigTestFailed(
            f"nginx rejected the configuration: {_quote(output)}. The previous "
            f"configuration is still in place.{hint}",
            output=output,
        )
    return output


def run_reload(argv: list[str], timeout: float = 60, pid_file: Path | None = None) -> str:
    """Run the reload command; return its output once the reload has taken over.

    With nginx's ``pid_file`` readable, wait until its old workers stopped accepting
    (``nginx_processes``): the command returns before they do. nginx's own ``-s reload``
    is then done without its process: SIGHUP to that master (``signals_master``).
    """
    master = nginx_processes.read_master(pid_file) if pid_file else None
    old = nginx_processes.workers(master) if master else set()
    if master and signals_master(argv):
        output = _signal_reload(master)
    else:
        code, output = _run(argv, timeout, RELOAD_COMMAND_SETTING, "nginx reload")
        if code != 0:
            raise NginxReloadFailed(
                f"Reloading nginx failed (exit {code}): {_quote(output)}. nginx keeps serving "
                "the previous configuration; check that the privileged worker is running and "
                f"that {RELOAD_COMMAND_SETTING} works when run by hand.",
                output=output,
            )
    if (
        master
        and old
        and not nginx_processes.wait_for_takeover(master, old, nginx_processes.TAKEOVER_TIMEOUT)
    ):
        raise NginxReloadFailed(
            f"The reload command succeeded, but nginx (master PID {master}) still runs its "
            f"previous workers after {nginx_processes.TAKEOVER_TIMEOUT:.0f} s: it did not "
            "apply the new configuration. Its error log says why (often a port it cannot "
            "bind); nginx keeps serving the previous configuration. If the reload command "
            f"reaches another nginx than the one {PID_FILE_SETTING} names, fix either.",
            output=output,
        )
    return output


def signals_master(argv: list[str]) -> bool:
    """Whether the reload command is nginx's own ``-s reload`` (``-c``, ``-p`` and such
    before it). That process reads the whole configuration again (every site and its
    certificate: about 0.7 ms a site here), only to find the master in its pid file and
    send it SIGHUP; the master then reads it once more. With the master known from
    VIRTUALHOSTS_NGINX_PID_FILE (the one the reload is watched on), SIGHUP is sent to it
    directly: one read of the configuration less per reload. Any other command (systemctl,
    a script) runs as given."""
    return len(argv) >= 3 and Path(argv[0]).name == "nginx" and argv[-2:] == ["-s", "reload"]


def _signal_reload(master: int) -> str:
    """What ``nginx -s reload`` does once it found the master: SIGHUP to it."""
    try:
        os.kill(master, signal.SIGHUP)
    except ProcessLookupError as err:
        raise NginxReloadFailed(
            f"nginx's master (PID {master}) exited just before it was told to reload: nginx "
            "is not running. Start it; the run is retried.",
        ) from err
    except PermissionError as err:
        raise NginxReloadFailed(
            f"Cannot signal nginx's master (PID {master}) to reload: {err.strerror}. Run the "
            f"privileged worker as root, or set {RELOAD_COMMAND_SETTING} to a command it may "
            "run.",
        ) from err
    return f"SIGHUP sent to nginx's master process (PID {master})\n"


def test_and_reload(
    test_argv: list[str], reload_argv: list[str], timeout: float = 60, pid_file: Path | None = None
) -> str:
    """Reload only after the configuration test passed; return both outputs."""
    return run_test(test_argv, timeout) + run_reload(reload_argv, timeout, pid_file)

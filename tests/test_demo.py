"""`make demo` end to end: a real Modoboa deploy, workers, API, nginx and Pebble on loopback.

It runs as `make demo-ui` does (`--ui`): the same stages, then Modoboa's web UI over HTTPS
until Ctrl-C, so one deploy checks both README commands' promises.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from modoboa_pro.demo.run import HOSTNAMES

pytestmark = pytest.mark.demo

DEMO_TIMEOUT = 240
READY = "Everything keeps running until you press Ctrl-C."


def _row(output: str, hostname: str) -> re.Match[str] | None:
    """The final table's row for ``hostname``: status, issuer, expiry, serial."""
    return re.search(
        rf"^\s+{re.escape(hostname)}\s+(\S+)\s+(Pebble Intermediate CA \w+)\s+"
        r"(\d{4}-\d\d-\d\d \d\d:\d\d)\s+([0-9a-f]+)\s*$",
        output,
        re.MULTILINE,
    )


def _until_ready(proc: subprocess.Popen[str]) -> str:
    """The demo's output up to the line saying the UI is served (or to its exit)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break  # exited
        lines.append(line)
        if line.strip() == READY:
            break
    return "".join(lines)


def _get(url: str, cafile: str) -> tuple[int, str, str]:
    context = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(url, context=context, timeout=10) as answer:  # noqa: S310
        return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()


def test_make_demo_serves_both_hosts_over_https_then_the_web_ui(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("MODOBOA_PRO_TEST_")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modoboa_pro.demo", "--ui", "--workdir", str(tmp_path / "demo")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _until_ready(proc)
        assert READY in output, output
        for hostname in HOSTNAMES:
            assert re.search(rf"{re.escape(hostname)}\s+=> active", output), output
            row = _row(output, hostname)
            assert row is not None, output
            assert row.group(1) == "active"
            # openssl saw the host's own certificate, chained to Pebble's root.
            assert f"-servername {hostname}" in output
            assert f"subject  CN = {hostname}" in output
        assert output.count("verify   0 (ok)") == len(HOSTNAMES), output
        assert re.search(r"answer\s+HTTP 200, application/json", output), output

        # The web UI: the URL and login printed, the SPA, its config and our page served.
        origin = re.search(r"Modoboa's web UI: (https://127\.0\.0\.1:\d+)/", output)
        assert origin is not None, output
        assert "log in as admin / password" in output
        cafile = str(tmp_path / "demo" / "ui" / "tls" / "ca.pem")
        status, kind, body = _get(origin.group(1) + "/", cafile)
        assert (status, kind.split(";")[0]) == (200, "text/html") and '<div id="app"' in body
        status, _, body = _get(origin.group(1) + "/config.json", cafile)
        assert '"API_BASE_URL": "/api/v2"' in body
        status, kind, body = _get(
            origin.group(1) + "/sitestatic/virtualhosts/remoteEntry.js", cafile
        )
        assert kind.startswith(("application/javascript", "text/javascript")), kind
        assert "export" in body and "init" in body

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output += rest
    assert proc.returncode == 0, output
    assert "Stopped everything the demo started" in output
    # Every process the demo started is gone (it stops them by PID).
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output.split("Stopped", 1)[1])]
    assert len(pids) >= 7, output  # redis, pebble, two nginx, two workers, runserver
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # The instance's SQLite database in WAL mode, as docs/installation.md recommends (the
    # mode is kept in the file).
    (database,) = (tmp_path / "demo").rglob("modoboa.sqlite3")
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

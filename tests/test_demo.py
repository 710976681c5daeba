"""`make demo` end to end: a real Modoboa deploy, workers, API, nginx and Pebble on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from modoboa_pro.demo.run import HOSTNAMES

pytestmark = pytest.mark.demo

DEMO_TIMEOUT = 240


def _row(output: str, hostname: str) -> re.Match[str] | None:
    """The final table's row for ``hostname``: status, issuer, expiry, serial."""
    return re.search(
        rf"^\s+{re.escape(hostname)}\s+(\S+)\s+(Pebble Intermediate CA \w+)\s+"
        r"(\d{4}-\d\d-\d\d \d\d:\d\d)\s+([0-9a-f]+)\s*$",
        output,
        re.MULTILINE,
    )


def test_make_demo_serves_both_hosts_over_https(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("MODOBOA_PRO_TEST_")
    }
    done = subprocess.run(
        [sys.executable, "-m", "modoboa_pro.demo", "--workdir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
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
    assert "Stopped everything the demo started" in output
    # Every process the demo started is gone (it stops them by PID).
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output.split("Stopped", 1)[1])]
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

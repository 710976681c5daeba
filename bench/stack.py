"""The deployed instance the bench measures: ``make demo``'s stages, kept running.

A Modoboa deployed with ``modoboa-admin.py deploy`` (SQLite; PostgreSQL with
``--database postgresql``), the plugin, two
``rqworker modoboa`` processes, the privileged worker, Redis, nginx, Pebble
(``PEBBLE_VA_NOSLEEP=1``, no authz reuse, no bad nonces: see PebbleServer) and the DNS stub,
all on loopback and stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modoboa_pro.demo.console import Console
from modoboa_pro.demo.run import Demo
from modoboa_pro.testing.servers import PostgresServer

# Where Certbot and the protocol floor put their HTTP-01 answers; one catch-all HTTP site
# serves it for their names (written once, outside the timed part: this favours them).
CHALLENGE_SITE = "zz-bench-challenges.conf"
BASELINE_SUFFIXES = (".certbot.bench.test", ".floor.bench.test")


@dataclass
class BenchStack:
    demo: Demo
    webroot: Path

    @property
    def nginx(self):  # noqa: ANN201 (NginxServer)
        return self.demo.nginx

    @property
    def pebble(self):  # noqa: ANN201 (PebbleServer)
        return self.demo.pebble

    # -- figures --------------------------------------------------------------------------

    def log_offset(self) -> int:
        return self.nginx.error_log_path.stat().st_size

    def reloads_since(self, offset: int) -> int:
        """Reloads nginx handled since ``offset`` of its error log (one line each)."""
        with open(self.nginx.error_log_path, "rb") as log:
            log.seek(offset)
            return log.read().count(b"(SIGHUP) received")

    def worker_rss_kib(self) -> dict[str, int]:
        """Resident memory of each RQ worker's main process (a job runs in a fork of it)."""
        out = {}
        for process in self.demo.processes:
            if process.name.startswith("rqworker") and process.pid:
                out[process.name] = _rss_kib(process.pid)
        return out

    def worker_pids(self) -> dict[str, int]:
        return {
            p.name: p.pid for p in self.demo.processes if p.name.startswith("rqworker") and p.pid
        }

    def orders_per_host(self, prefix: str) -> dict[str, int]:
        """Successful CA orders per host whose name starts with ``prefix`` (recorded history)."""
        out = self.demo.instance.manage(
            "shell",
            "-c",
            "import json\n"
            "from django.db.models import Count\n"
            "from modoboa_pro.virtualhosts.models import VirtualHostEvent\n"
            "rows = (VirtualHostEvent.objects.filter(step='order', outcome='ok',\n"
            f"        virtualhost__hostname__startswith={prefix!r})\n"
            "        .values('virtualhost__hostname').annotate(n=Count('id')))\n"
            "print(json.dumps({r['virtualhost__hostname']: r['n'] for r in rows}))\n",
        )
        return json.loads(out.strip().splitlines()[-1])

    # -- the baselines' nginx side --------------------------------------------------------

    def write_https_site(self, hostname: str, fullchain: Path, privkey: Path) -> None:
        """The same kind of HTTPS site the plugin writes, for a baseline's certificate."""
        nginx = self.nginx
        (nginx.sites_dir / f"bench-{hostname}.conf").write_text(
            f"""server {{
    listen 127.0.0.1:{nginx.https_port} ssl;
    server_name {hostname};
    ssl_certificate {fullchain};
    ssl_certificate_key {privkey};
    location / {{ return 200 "bench\\n"; }}
}}
"""
        )

    def reload_nginx(self) -> None:
        """``nginx -s reload``, as an operator's deploy hook would; returns once signalled."""
        subprocess.run(self.nginx.reload_command, check=True, capture_output=True)

    def _write_challenge_site(self) -> None:
        nginx = self.nginx
        names = " ".join(f"*{s}" for s in BASELINE_SUFFIXES)
        (nginx.sites_dir / CHALLENGE_SITE).write_text(
            f"""server {{
    listen 127.0.0.1:{nginx.http_port};
    server_name {names};
    location /.well-known/acme-challenge/ {{ root {self.webroot}; }}
}}
"""
        )
        nginx.reload()


def _append_settings(path: Path, values: Mapping[str, object]) -> None:
    """As an operator adds lines to settings.py (after the demo's: these win)."""
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    with open(path, "a") as settings:
        settings.write("\n# --- Added by the bench ---\n" + "\n".join(lines) + "\n")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def running_stack(
    root: Path,
    *,
    modoboa_workers: int = 2,
    extra_settings: Mapping[str, object] | None = None,
    postgres: bool = False,
) -> Iterator[BenchStack]:
    """Deploy and start everything under ``root``; stop it all (by PID) on the way out.
    ``extra_settings`` are appended to the instance's settings.py before the workers start.
    ``postgres``: the instance on a PostgreSQL cluster of its own instead of SQLite."""
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack_of:
        url = None
        if postgres:
            database = PostgresServer(root / "postgres")
            stack_of.callback(database.stop)
            url = database.start().create_database("modoboa")
        yield from _running(root, modoboa_workers, extra_settings, url)


def _running(
    root: Path,
    modoboa_workers: int,
    extra_settings: Mapping[str, object] | None,
    database_url: str | None,
) -> Iterator[BenchStack]:
    log = open(root / "stack.log", "w")  # noqa: SIM115 (closed below)
    demo = Demo(
        Console(log, stages=7), root, hostnames=(), modoboa_workers=modoboa_workers,
        database_url=database_url,
    )  # fmt: skip
    try:
        began = time.monotonic()
        demo.start_services()
        demo.deploy()
        if extra_settings:
            _append_settings(demo.instance.settings_path, extra_settings)
        demo.start_modoboa()
        webroot = root / "bench-webroot"
        (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
        stack = BenchStack(demo, webroot)
        stack._write_challenge_site()
        print(f"stack ready in {time.monotonic() - began:.1f}s under {root}", flush=True)
        yield stack
    finally:
        demo.stop_all()
        log.close()

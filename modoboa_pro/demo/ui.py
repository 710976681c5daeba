"""Modoboa's web UI for the demo instance: its SPA and API behind nginx over HTTPS on loopback.

Laid out like Modoboa's installer: ``/`` is the SPA (``<instance>/frontend``), ``/sitestatic/``
the collected static files (our federated remote among them), ``/api`` and ``/accounts`` the
application. The SPA needs HTTPS (secure cookies, https redirect URIs), so nginx terminates TLS
with a certificate from a throwaway CA and tells Django the scheme (``X-Forwarded-Proto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modoboa_pro.demo.instance import ModoboaInstance
from modoboa_pro.testing import NginxServer, make_ca, make_server_cert

ADMIN_LOGIN = ("admin", "password")  # what `load_initial_data` creates, as Modoboa documents
MIME_TYPES = Path("/etc/nginx/mime.types")


@dataclass(frozen=True)
class WebUi:
    """Where the browser goes, and what it must trust."""

    origin: str  # https://127.0.0.1:PORT
    ca_path: Path  # the CA that signed the UI's certificate
    proxy: NginxServer


def site_conf(port: int, instance: ModoboaInstance, app_port: int, cert: Path, key: Path) -> str:
    """The nginx server block serving the SPA, the static files and the application."""
    frontend = instance.project_dir / "frontend"
    static_root = instance.project_dir / "sitestatic"
    return f"""# Modoboa's web UI (written by modoboa_pro.demo.ui)
server {{
    listen 127.0.0.1:{port} ssl;
    server_name _;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    include {MIME_TYPES};
    location /sitestatic/ {{
        alias {static_root}/;
    }}
    location ~ ^/(api|accounts)/ {{
        proxy_pass http://127.0.0.1:{app_port};
        # The port matters: Django builds redirect URIs and checks CSRF origins from it.
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location / {{
        root {frontend};
        try_files $uri $uri/ /index.html;
    }}
}}
"""


def prepare_instance(instance: ModoboaInstance, origin_host: str) -> None:
    """What an operator runs once for the UI: static files and the OAuth app's redirect URIs.

    ``load_initial_data --relative-urls-in-config`` resets the redirect URIs, so
    ``add_allowed_hosts`` comes after it.
    """
    instance.manage("collectstatic", "--noinput")
    instance.manage("load_initial_data", "--relative-urls-in-config")
    instance.manage("add_allowed_hosts", origin_host)


def start(instance: ModoboaInstance, app_port: int, workdir: Path, port: int) -> WebUi:
    """Start nginx serving the UI on ``port``; the instance must be prepared for that origin."""
    tls = workdir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(tls, common_name="modoboa_pro demo UI CA")
    cert, key = make_server_cert(tls, ca_cert, ca_key, names=("localhost",), ips=("127.0.0.1",))
    proxy = NginxServer(workdir / "nginx")
    (proxy.sites_dir / "modoboa-ui.conf").write_text(site_conf(port, instance, app_port, cert, key))
    proxy.start()
    return WebUi(origin=f"https://127.0.0.1:{port}", ca_path=ca_cert, proxy=proxy)

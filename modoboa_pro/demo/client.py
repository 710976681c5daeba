"""Talk to the instance as an admin would (REST API) and check what nginx serves (TLS)."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from modoboa_pro.demo.instance import DemoError


class ModoboaApi:
    """Modoboa's REST API v2 with an admin token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}/api/v2/{path.lstrip('/')}"
        try:
            response = self.session.request(method, url, timeout=30, **kwargs)
        except requests.RequestException as err:
            raise DemoError(f"{method} {url}: {err}") from err
        if response.status_code >= 400:
            raise DemoError(f"{method} {url} -> HTTP {response.status_code}: {response.text[:500]}")
        return response

    def set_parameters(self, app: str, values: dict[str, Any]) -> None:
        """What the Settings page does when the admin clicks Save."""
        self._call("PUT", f"parameters/global/{app}/", json=values)

    def create_virtualhost(self, hostname: str) -> dict[str, Any]:
        return dict(self._call("POST", "virtualhosts/", json={"hostname": hostname}).json())

    def virtualhost(self, host_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"virtualhosts/{host_id}/").json())

    def virtualhosts(self) -> list[dict[str, Any]]:
        """Every host, through all the pages of the list."""
        hosts: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self._call("GET", f"virtualhosts/?page_size=200&page={page}").json()
            if not isinstance(data, dict):
                return hosts + list(data)
            hosts += data["results"]
            if not data.get("next"):
                return hosts
            page += 1


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with the URL's host name as SNI and Host header."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=10)
        self._address = address
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), timeout=self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass(frozen=True)
class HttpsAnswer:
    status: int
    server: str
    content_type: str
    body: str


def https_get(
    hostname: str,
    port: int,
    path: str,
    *,
    cafile: Path,
    address: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> HttpsAnswer:
    """GET ``https://hostname:port/path`` via ``address``, verifying against ``cafile``."""
    context = ssl.create_default_context(cafile=str(cafile))
    conn = _PinnedHTTPSConnection(hostname, port, address, context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return HttpsAnswer(
            response.status,
            response.getheader("Server", ""),
            response.getheader("Content-Type", ""),
            body,
        )
    except (OSError, http.client.HTTPException) as err:
        raise DemoError(f"GET https://{hostname}:{port}{path} failed: {err}") from err
    finally:
        conn.close()


@dataclass(frozen=True)
class OpensslProof:
    command: str
    subject: str
    issuer: str
    verify: str


def openssl_proof(hostname: str, port: int, cafile: Path) -> OpensslProof:
    """``openssl s_client`` against nginx with the host's SNI: subject, issuer, verdict."""
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        hostname,
        "-CAfile",
        str(cafile),
        "-verify_hostname",
        hostname,
    ]
    try:
        done = subprocess.run(
            argv,
            input="",
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DemoError(f"{' '.join(argv)}: {err}") from err
    out = done.stdout + done.stderr

    def field(pattern: str) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        return match.group(1).strip() if match else "(not found)"

    shown = " ".join(cafile.name if a == str(cafile) else a for a in argv)
    return OpensslProof(
        command=shown,
        subject=field(r"^subject=(.*)$"),
        issuer=field(r"^issuer=(.*)$"),
        verify=field(r"Verify return code: (.*)$"),
    )

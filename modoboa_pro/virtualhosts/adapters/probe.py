"""Check what nginx really serves: the challenge path, the removal of a site, the certificate.

A reload is asynchronous: the reload command returns once nginx's master got the signal;
the master then starts new workers, sleeps 100 ms, and only then tells the old ones to stop
accepting (longer on a busy machine). When the reload waited for that
(``nginx_processes``, through VIRTUALHOSTS_NGINX_PID_FILE), one answer tells what nginx
serves. Otherwise a check waits for the first answer of the new configuration (asking
again every ``RETRY_INTERVAL``), then requires a streak of ``STABLE_SUCCESSES``
consistent answers ``STABLE_INTERVAL`` apart, each on a fresh connection: still a bet,
which is why reloads wait for the old workers when they can.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeployNotVerified, NginxError, VirtualHostError
from . import webroot
from .x509 import CertificateFacts

PREFLIGHT_TIMEOUT = 5.0
# Consecutive fresh-connection successes, STABLE_INTERVAL apart, that prove a reload took
# effect everywhere.
STABLE_SUCCESSES = 5
STABLE_INTERVAL = 0.02
# Pause before asking again after an answer of the old configuration (not yet switched).
RETRY_INTERVAL = 0.01
VERIFY_TIMEOUT = 15.0
# Probe tokens are named apart from the CA's, for whoever reads the webroot.
PROBE_TOKEN_PREFIX = "modoboa-pro-probe-"  # noqa: S105 - a file name prefix
# A probe token's answer is 32 hex digits: more is not our token.
PROBE_BODY_MAX = 4096


@dataclass(frozen=True)
class Endpoint:
    """Where nginx serves HTTP for the hosts, as the plugin reaches it."""

    webroot: Path
    verify_address: str
    http_port: int
    conf_dir: Path
    ledgers: Path  # the hosts' token ledgers (``webroot.TokenLedger``)
    # Consecutive consistent answers a check requires (1 once reloads wait for nginx).
    stable: int = STABLE_SUCCESSES


def confirm_served(
    served: Callable[[str], CertificateFacts],
    hostname: str,
    serial: str,
    port: int,
    *,
    stable: int = STABLE_SUCCESSES,
) -> CertificateFacts:
    """Wait until nginx presents ``serial`` for ``hostname`` ``stable`` times in a row."""
    deadline = time.monotonic() + VERIFY_TIMEOUT
    streak = 0
    seen = "no handshake completed"
    last: CertificateFacts | None = None
    while time.monotonic() < deadline:
        try:
            last = served(hostname)
            seen = f"serial {last.serial}"
            streak = streak + 1 if last.serial == serial else 0
        except VirtualHostError as err:
            streak, seen = 0, err.message
        if streak >= stable and last is not None:
            return last
        time.sleep(STABLE_INTERVAL if streak else RETRY_INTERVAL)
    raise DeployNotVerified(
        f"After the reload nginx does not steadily serve the new certificate for {hostname} "
        f"on port {port} (expected serial {serial}, last saw: {seen}). Check that the "
        "reload really happened (privileged worker, VIRTUALHOSTS_NGINX_RELOAD_COMMAND) and "
        "that no other server block answers for this name.",
    )


def preflight(s: Endpoint, hostname: str) -> None:
    """Check that nginx serves this host's challenge path before asking the CA.

    Every failed validation counts against the CA's rate limits; a token we
    cannot fetch ourselves through nginx would fail there too.
    """
    ok, got, url = probe_challenge(s, hostname, served=True)
    if not ok:
        raise NginxError(
            f"nginx does not serve the challenge path of {hostname} on port {s.http_port} "
            f"({got} from {url}). Check that nginx.conf includes the site directory "
            f"{s.conf_dir} and that nothing else answers for {hostname} on that port.",
            retryable=True,
        )


def serves_challenge(s: Endpoint, hostname: str) -> bool:
    """Whether nginx steadily serves this host's challenge path (no exception)."""
    return probe_challenge(s, hostname, served=True)[0]


def confirm_removed(s: Endpoint, hostname: str) -> None:
    """Check that nginx no longer serves a removed host's site."""
    ok, got, url = probe_challenge(s, hostname, served=False)
    if not ok:
        raise NginxError(
            f"nginx still serves {hostname} after its site was removed ({got} from {url}). "
            "Check that the reload happened and that no other site file names this host.",
            retryable=True,
        )


def probe_challenge(s: Endpoint, hostname: str, *, served: bool) -> tuple[bool, str, str]:
    """Publish a probe token and watch whether nginx serves it for ``hostname``.

    Requires ``s.stable`` consecutive answers, each on a fresh connection (see the
    module's docstring). Returns (the expected state was observed, the last
    observation, the URL).

    The token goes through the host's ledger like the CA's: a run killed while probing
    never removes it, the host's next run does.
    """
    token = f"{PROBE_TOKEN_PREFIX}{uuid.uuid4().hex}"
    content = uuid.uuid4().hex
    publisher = webroot.WebrootPublisher(s.webroot, webroot.TokenLedger(s.ledgers, hostname))
    publisher.publish(token, content)
    address = s.verify_address if ":" not in s.verify_address else f"[{s.verify_address}]"
    path = f"/.well-known/acme-challenge/{token}"
    url = f"http://{address}:{s.http_port}{path}"
    deadline = time.monotonic() + PREFLIGHT_TIMEOUT
    streak = 0
    got = "no request made"
    try:
        while streak < s.stable and time.monotonic() < deadline:
            try:
                status, body = _get(s.verify_address, s.http_port, hostname, path)
                is_served = status == 200 and body.strip() == content.encode()
                got = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as err:
                is_served, got = False, f"no answer ({err.__class__.__name__})"
            streak = streak + 1 if is_served == served else 0
            if streak < s.stable:
                time.sleep(STABLE_INTERVAL if streak else RETRY_INTERVAL)
    finally:
        publisher.remove(token)
    return streak >= s.stable, got, url


def _get(address: str, port: int, hostname: str, path: str) -> tuple[int, bytes]:
    """``GET path`` with ``Host: hostname`` on a fresh connection, closed after the answer
    (plain http.client: a requests session per probe cost more than nginx's answer)."""
    conn = http.client.HTTPConnection(address, port, timeout=PREFLIGHT_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Host": hostname, "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(PROBE_BODY_MAX)
    finally:
        conn.close()

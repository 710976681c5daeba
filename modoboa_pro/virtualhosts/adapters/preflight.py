"""Pre-flight before an order: the name resolves, and a canary token comes back over HTTP.

The CA resolves the name (A and AAAA) and fetches the challenge from each address; a
validation that fails costs rate limit, and Let's Encrypt pauses names that keep failing.
So ask the same questions first: through the DNS server the operator names (or the
system's), then over HTTP through every address found, as the CA's validators will.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import uuid
from pathlib import Path

import dns.exception
import dns.resolver

from ..errors import (
    ConfigurationError,
    PreflightDnsFailed,
    PreflightPortUnreachable,
    PreflightWrongServer,
)
from . import webroot

DEFAULT_DNS_PORT = 53
# One try, then the whole lookup: a resolver that keeps silent fails the run within seconds.
RESOLVER_TIMEOUT = 3.0
RESOLVER_LIFETIME = 6.0
# Let's Encrypt's validators give up after about 10 s; a server slower than this fails there.
CANARY_TIMEOUT = 5.0
# A canary is 32 hex digits: more than this is not ours.
CANARY_BODY_MAX = 4096
# Named apart from the CA's tokens and the local probes', for whoever reads the webroot.
CANARY_PREFIX = "modoboa-pro-canary-"
SYSTEM_RESOLVER = "the system's resolver"
NO_ORDER = "No order was sent to the certificate authority; the run is retried with back-off."
NAT_HINT = (
    "Behind a NAT that cannot reach its own public address (no hairpinning), turn the "
    "pre-flight off: VIRTUALHOSTS_PREFLIGHT = False."
)


def parse_resolver(spec: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, or a bare address for port 53) -> (address, port)."""
    text = spec.strip()
    host, port = text, str(DEFAULT_DNS_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError as err:
        raise ConfigurationError(
            f"VIRTUALHOSTS_PREFLIGHT_RESOLVER is {spec!r}: expected the IP address and port "
            "of a DNS server, e.g. '192.0.2.53:53' or '[2001:db8::53]:53'."
        ) from err
    return host, number


def resolver(spec: str | None) -> dns.resolver.Resolver:
    """A resolver asking ``spec`` (VIRTUALHOSTS_PREFLIGHT_RESOLVER), else the system's."""
    if spec is None:
        try:
            made = dns.resolver.Resolver()  # /etc/resolv.conf, not /etc/hosts: as the CA
        except dns.resolver.NoResolverConfiguration as err:
            raise PreflightDnsFailed(
                "Pre-flight: the system has no DNS resolver configured (/etc/resolv.conf). "
                f"Set VIRTUALHOSTS_PREFLIGHT_RESOLVER. {NO_ORDER}"
            ) from err
    else:
        host, port = parse_resolver(spec)
        made = dns.resolver.Resolver(configure=False)
        made.nameservers = [host]
        made.port = port
    made.timeout = RESOLVER_TIMEOUT
    made.lifetime = RESOLVER_LIFETIME
    return made


def resolve(hostname: str, resolver_spec: str | None) -> list[str]:
    """The addresses ``hostname`` has in DNS (A, then AAAA); PreflightDnsFailed says why none."""
    asking = resolver(resolver_spec)
    asked = resolver_spec or SYSTEM_RESOLVER
    addresses: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = asking.resolve(hostname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as err:
            raise PreflightDnsFailed(
                f"Pre-flight (DNS): {hostname} does not exist (NXDOMAIN from {asked}). Create "
                f"its A and/or AAAA record pointing to this server. {NO_ORDER}"
            ) from err
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as err:
            raise PreflightDnsFailed(
                f"Pre-flight (DNS): the resolver {asked} did not answer for {hostname} "
                f"({_dns_reason(err)}). Check that it is reachable "
                f"(VIRTUALHOSTS_PREFLIGHT_RESOLVER). {NO_ORDER}"
            ) from err
        except dns.exception.DNSException as err:
            raise PreflightDnsFailed(
                f"Pre-flight (DNS): looking up {hostname} at {asked} failed: {err}. {NO_ORDER}"
            ) from err
        addresses += [rdata.to_text() for rdata in answer]
    if not addresses:
        raise PreflightDnsFailed(
            f"Pre-flight (DNS): {hostname} has no address (no A or AAAA record at {asked}). "
            f"Point it to this server. {NO_ORDER}"
        )
    return addresses


def _dns_reason(err: Exception) -> str:
    if isinstance(err, dns.exception.Timeout):
        return "no answer in time"
    return "every server failed or refused the query"


def check(
    hostname: str,
    *,
    resolver_spec: str | None,
    webroot_dir: Path,
    ledger: webroot.TokenLedger,
    port: int,
) -> list[str]:
    """Resolve ``hostname`` and fetch a canary token through each address; return them.

    Raises a PreflightFailed subclass naming the problem: DNS, the port, another server.
    The token goes through the host's ledger: a run killed meanwhile leaves nothing behind.
    """
    addresses = resolve(hostname, resolver_spec)
    token = f"{CANARY_PREFIX}{uuid.uuid4().hex}"
    content = uuid.uuid4().hex
    publisher = webroot.WebrootPublisher(webroot_dir, ledger)
    publisher.publish(token, content)
    try:
        for address in addresses:
            _fetch_canary(hostname, address, port, token, content)
    finally:
        publisher.remove(token)
    return addresses


def _fetch_canary(hostname: str, address: str, port: int, token: str, content: str) -> None:
    where = f"{address} port {port} ({hostname} resolves to {address})"
    # Plain http.client on a fresh connection, as the probes do: requests builds a session,
    # a pool and (with urllib3-future, which Modoboa's caldav installs as urllib3) an
    # HTTP/2-capable backend for this one GET, about 10 ms of CPU. It follows no redirect:
    # the token is served by our site itself, on this port.
    conn = http.client.HTTPConnection(address, port, timeout=CANARY_TIMEOUT)
    try:
        conn.request(
            "GET",
            f"/.well-known/acme-challenge/{token}",
            headers={"Host": hostname, "Connection": "close"},
        )
        response = conn.getresponse()
        status, body = response.status, response.read(CANARY_BODY_MAX)
        server = response.getheader("Server") or ""
    except TimeoutError as err:
        raise PreflightPortUnreachable(
            f"Pre-flight (port {port}): no answer from {where} within {CANARY_TIMEOUT:.0f} s. "
            f"Check the firewall and that nginx listens there. {NAT_HINT} {NO_ORDER}"
        ) from err
    except (OSError, http.client.HTTPException) as err:
        reason = "connection refused" if _refused(err) else "connection failed"
        raise PreflightPortUnreachable(
            f"Pre-flight (port {port}): {reason} by {where}. Check that nginx listens on "
            f"that address and port, and the firewall. {NAT_HINT} {NO_ORDER}"
        ) from err
    finally:
        conn.close()
    if status != 200 or body.decode("utf-8", "replace").strip() != content:
        got = f"HTTP {status}" + (f", Server: {server}" if server else "")
        raise PreflightWrongServer(
            f"Pre-flight (another server): {where} answers, but not with our canary token "
            f"({got}): another web server, proxy or CDN answers for this name there, or it "
            f"points to another machine. Point {hostname} to this server's nginx. "
            f"{NAT_HINT} {NO_ORDER}"
        )


def _refused(err: BaseException) -> bool:
    """Whether ECONNREFUSED is among the causes of ``err`` (itself, or nested by a library)."""
    pending: list[object] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return True
        pending += [getattr(current, "reason", None), current.__cause__, *current.args]
    return False

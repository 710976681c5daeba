"""A TLS proxy on loopback in front of an ACME server (Pebble), answering chosen requests itself.

Tests put it between the plugin and Pebble to make the CA refuse a request the way a real CA
does (e.g. ``newOrder`` answered 429 ``rateLimited`` with a ``Retry-After``), and to count what
the client asked for. Everything else reaches Pebble unchanged.

With ``renewal_info=True`` it is also the CA's ARI (RFC 9773), which Debian's Pebble 2.4 lacks:
the directory gains ``renewalInfo``, and ``GET renewalInfo/<certificate id>`` is answered with
the window the test set (:meth:`AcmeProxy.set_renewal_info`). The JWS payload of every
``newOrder`` is recorded (:meth:`AcmeProxy.orders`: ``replaces``, ``profile``). Orders carrying
``replaces`` are forwarded unchanged: Pebble 2.4 ignores fields it does not know (checked in
tests/test_harness.py), and the proxy could not strip one without breaking the signature.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import http.server
import json
import socket
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, cast

import requests

from modoboa_pro.testing import pki

PROBLEM_JSON = "application/problem+json"
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"
ALREADY_REPLACED = "urn:ietf:params:acme:error:alreadyReplaced"
MALFORMED = "urn:ietf:params:acme:error:malformed"
# Where the proxy serves ARI: GET <origin>/renewal-info/<certificate id>.
RENEWAL_INFO_PATH = "/renewal-info/"
SERVER_INTERNAL = "urn:ietf:params:acme:error:serverInternal"
INVALID_PROFILE = "urn:ietf:params:acme:error:invalidProfile"
UNAUTHORIZED = "urn:ietf:params:acme:error:unauthorized"
_JSON_TYPES = ("application/json", PROBLEM_JSON)
# Headers that describe one connection, or the body as sent, not the resource: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)
# An idle keep-alive connection is dropped after this long, so no handler thread lingers.
_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Problem:
    """An ACME error answer (RFC 8555 6.7): HTTP status, problem type, detail, extra headers."""

    status: int
    type: str
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(
            {"type": self.type, "detail": self.detail, "status": self.status}
        ).encode()


def http_date(when: datetime.datetime) -> str:
    """``when`` as an HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``), the other Retry-After form."""
    return email.utils.format_datetime(when.astimezone(datetime.UTC), usegmt=True)


def rate_limited(detail: str, retry_after: str) -> Problem:
    """429 ``rateLimited``, as Let's Encrypt answers; ``retry_after`` is delta-seconds or an
    HTTP-date (:func:`http_date`)."""
    return Problem(429, RATE_LIMITED, detail, {"Retry-After": retry_after})


# Let's Encrypt's self-service portal, as its pause answers link to it (Boulder's WFE).
UNPAUSE_PORTAL = "https://portal.letsencrypt.org/sfe/v1/unpause"


def paused(
    hostname: str, jwt: str = "eyJ0ZXN0IjoxfQ.e30.c2lnbmF0dXJl", *, status: int = 403
) -> Problem:
    """The CA paused this account for ``hostname`` (too many failed validations), worded as
    Let's Encrypt's Boulder words it: 403 ``unauthorized`` (or 429 ``rateLimited``) with the
    self-service unpause link."""
    return Problem(
        status,
        RATE_LIMITED if status == 429 else UNAUTHORIZED,
        f"Your account is temporarily prevented from requesting certificates for {hostname} "
        f"and possibly others. Please visit: {UNPAUSE_PORTAL}?jwt={jwt}",
    )


def already_replaced(detail: str = "the certificate was already replaced") -> Problem:
    """409 ``alreadyReplaced`` (RFC 9773 5): the order's ``replaces`` names a certificate
    that another order replaced already."""
    return Problem(409, ALREADY_REPLACED, detail)


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RenewalAnswer:
    """What the proxy answers to ``GET renewalInfo/<id>``: status, raw body, headers."""

    body: str
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


def window(
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    retry_after: str | None = None,
    explanation_url: str | None = None,
) -> RenewalAnswer:
    """A suggested window as a CA sends it (``end`` before ``start`` is the test's choice)."""
    document: dict[str, object] = {
        "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}
    }
    if explanation_url is not None:
        document["explanationURL"] = explanation_url
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return RenewalAnswer(json.dumps(document), headers=headers)


@dataclass(frozen=True)
class Exchange:
    """One request the proxy received, and how it was answered."""

    method: str
    path: str
    resource: str | None  # the directory's name for the path ("newOrder"), "directory", or None
    status: int
    refused: bool  # answered by the proxy itself: the CA never saw it
    payload: Mapping[str, object] | None = None  # the JWS payload of a signed POST


def jws_payload(body: bytes) -> dict[str, object] | None:
    """The JSON payload of a flattened JWS request body; None for POST-as-GET or non-JWS."""
    try:
        encoded = json.loads(body)["payload"]
        if not encoded:
            return None
        decoded = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return decoded if isinstance(decoded, dict) else None


class ProfileDouble:
    """ACME profiles (draft-ietf-acme-profiles) for a CA without them (Pebble 2.4).

    Advertises :attr:`offered` in the directory's ``meta.profiles``, records the ``profile``
    of every newOrder (:attr:`ordered`, None when absent), and refuses the profiles in
    :attr:`refused` as a CA refuses an account one (``invalidProfile`` by default). The
    request is forwarded signed as it came: it cannot be re-signed without the account key,
    and Pebble 2.4, decoding JSON into its own structure, ignores the field.
    """

    def __init__(self) -> None:
        self.offered: dict[str, str] = {}
        self.refused: dict[str, Problem] = {}
        self.ordered: list[str | None] = []
        self._lock = threading.Lock()

    def offer(self, **profiles: str) -> None:
        """Advertise these profiles (name -> description) from now on."""
        self.offered = dict(profiles)

    def refuse(self, name: str, *, problem_type: str = INVALID_PROFILE) -> None:
        """Answer newOrders asking for ``name`` with 400 ``problem_type``."""
        detail = f"account is not permitted to use the profile {name!r}"
        self.refused[name] = Problem(400, problem_type, detail)

    def on_new_order(self, body: bytes) -> Problem | None:
        """Record the profile a newOrder asks for; the refusal to answer, if any."""
        payload = jws_payload(body) or {}
        profile = payload.get("profile")
        name = str(profile) if profile else None
        with self._lock:
            self.ordered.append(name)
        return self.refused.get(name) if name is not None else None

    def advertise(self, payload: bytes) -> bytes:
        """The directory with ``meta.profiles`` added (unchanged when none is offered)."""
        if not self.offered:
            return payload
        directory = json.loads(payload)
        directory.setdefault("meta", {})["profiles"] = self.offered
        return json.dumps(directory).encode()


@dataclass
class _Refusal:
    problem: Problem
    remaining: int | None  # None: every matching request


class AcmeProxy:
    """HTTPS on ``host`` (a certificate from its own test CA, :attr:`ca_bundle`), forwarding
    to the ACME server behind ``upstream_directory_url``.

    The ``Host`` header is passed on unchanged: the CA checks each JWS ``url`` against it and
    builds its own URLs from it (Pebble does), so the client keeps talking to the proxy. URLs
    naming the upstream itself are rewritten to the proxy's, in JSON bodies and in ``Location``
    and ``Link`` headers. Start it while the upstream answers: it reads the directory to know
    which path is ``newOrder``, ``newAccount``...
    """

    def __init__(
        self,
        workdir: Path,
        upstream_directory_url: str,
        upstream_ca_bundle: Path | str,
        *,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
        renewal_info: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        parts = urllib.parse.urlsplit(upstream_directory_url)
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.directory_path = parts.path or "/"
        self.upstream_ca_bundle = str(upstream_ca_bundle)
        self.host = host
        self.timeout = timeout
        self.ca_bundle, ca_key = pki.make_ca(
            self.workdir, common_name="ACME proxy test CA", stem="acme-proxy-ca"
        )
        self._cert, self._key = pki.make_server_cert(
            self.workdir, self.ca_bundle, ca_key, ips=(host,), stem="acme-proxy"
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._resources: dict[str, str] = {}
        self._refusals: dict[str, _Refusal] = {}
        self._exchanges: list[Exchange] = []
        self._connections: set[socket.socket] = set()
        self._local = threading.local()
        self.renewal_info = renewal_info
        # Answers per certificate id; the None key answers ids the test did not name.
        self._renewal_answers: dict[str | None, RenewalAnswer] = {}
        self.profiles = ProfileDouble()

    # -- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("AcmeProxy is not started")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def directory_url(self) -> str:
        return self.origin + self.directory_path

    # -- what the test controls -------------------------------------------------------------

    def refuse(self, resource: str, problem: Problem, *, times: int | None = None) -> None:
        """Answer requests to ``resource`` (a directory name such as ``newOrder``) with
        ``problem``, the next ``times`` of them or all of them."""
        with self._lock:
            if resource not in self._resources.values():
                known = ", ".join(sorted(set(self._resources.values())))
                raise ValueError(f"unknown ACME resource {resource!r} (known: {known})")
            self._refusals[resource] = _Refusal(problem, times)

    def allow(self, resource: str | None = None) -> None:
        """Forward ``resource`` (every resource by default) to the CA again."""
        with self._lock:
            if resource is None:
                self._refusals.clear()
            else:
                self._refusals.pop(resource, None)

    def set_renewal_info(self, cert_id: str | None, answer: RenewalAnswer) -> None:
        """Answer ``GET renewalInfo/<cert_id>`` (any id not set otherwise, for None) with
        ``answer``; an id with no answer gets 404, as a CA answers an unknown certificate."""
        with self._lock:
            self._renewal_answers[cert_id] = answer

    def renewal_info_asked(self) -> list[str]:
        """The certificate ids asked about, in order."""
        return [
            e.path.split(RENEWAL_INFO_PATH, 1)[1]
            for e in self.exchanges
            if e.resource == "renewalInfo"
        ]

    def orders(self) -> list[Mapping[str, object]]:
        """The payloads of the newOrder requests received (refused ones included)."""
        return [
            e.payload for e in self.exchanges if e.resource == "newOrder" and e.payload is not None
        ]

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def count(self, resource: str, *, refused: bool | None = None) -> int:
        """Requests received for ``resource`` (only those refused, or forwarded, if given)."""
        return sum(
            1
            for exchange in self.exchanges
            if exchange.resource == resource and (refused is None or exchange.refused == refused)
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._learn_resources()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        server = _Server((self.host, 0), self, context)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="acme-proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # keep-alive connections would outlive the listener
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxying -----------------------------------------------------------------------

    def _learn_resources(self) -> None:
        """Map the upstream's paths to their directory names (``/order-plz`` -> ``newOrder``)."""
        directory = requests.get(
            self.upstream_origin + self.directory_path,
            verify=self.upstream_ca_bundle,
            timeout=self.timeout,
        ).json()
        resources = {self.directory_path: "directory"}
        for name, url in directory.items():
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                resources[urllib.parse.urlsplit(url).path] = name
        with self._lock:
            self._resources = resources

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return cast(requests.Session, session)

    def handle(self, handler: _Handler) -> None:
        """Answer one request: refuse it as told, or forward it to the CA."""
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(handler.path).path
        resource = self._resources.get(path)
        if self.renewal_info and path.startswith(RENEWAL_INFO_PATH):
            resource = "renewalInfo"
        problem = self._take_refusal(resource)
        if problem is None and resource == "newOrder":
            problem = self.profiles.on_new_order(body)
        answered = problem is not None
        if problem is not None:
            status, headers, payload = (
                problem.status,
                self._problem_headers(problem),
                problem.body(),
            )
        elif resource == "renewalInfo":
            answered = True
            status, headers, payload = self._renewal_answer(path[len(RENEWAL_INFO_PATH) :])
        else:
            status, headers, payload = self._forward(handler, body)
            if resource == "directory" and self.renewal_info and status == 200:
                payload = self._with_renewal_info(payload)
            if resource == "directory" and status == 200:
                payload = self.profiles.advertise(payload)
        signed = jws_payload(body) if handler.command == "POST" and body else None
        with self._lock:
            self._exchanges.append(
                Exchange(handler.command, handler.path, resource, status, answered, signed)
            )
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)

    def _renewal_answer(self, cert_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            answer = self._renewal_answers.get(cert_id) or self._renewal_answers.get(None)
        if answer is None:
            problem = Problem(404, MALFORMED, f"no certificate with the id {cert_id!r}")
            return problem.status, [("Content-Type", PROBLEM_JSON)], problem.body()
        headers = [("Content-Type", "application/json"), *answer.headers.items()]
        return answer.status, headers, answer.body.encode()

    def _with_renewal_info(self, payload: bytes) -> bytes:
        directory = json.loads(payload)
        directory["renewalInfo"] = self.origin + RENEWAL_INFO_PATH.rstrip("/")
        return json.dumps(directory, indent=2).encode()

    def _take_refusal(self, resource: str | None) -> Problem | None:
        with self._lock:
            refusal = self._refusals.get(resource or "")
            if refusal is None:
                return None
            if refusal.remaining is not None:
                refusal.remaining -= 1
                if refusal.remaining <= 0:
                    del self._refusals[resource or ""]
            return refusal.problem

    def _problem_headers(self, problem: Problem) -> list[tuple[str, str]]:
        headers = [("Content-Type", PROBLEM_JSON), ("Cache-Control", "no-store")]
        nonce = self._fresh_nonce()
        if nonce:  # a CA gives one with its errors too (RFC 8555 6.5)
            headers.append(("Replay-Nonce", nonce))
        return headers + list(problem.headers.items())

    def _fresh_nonce(self) -> str | None:
        path = next((p for p, name in self._resources.items() if name == "newNonce"), None)
        if path is None:
            return None
        try:
            response = self._session().head(
                self.upstream_origin + path, verify=self.upstream_ca_bundle, timeout=self.timeout
            )
        except requests.RequestException:
            return None
        return response.headers.get("Replay-Nonce")

    def _forward(self, handler: _Handler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        # Host passes through: the CA checks the JWS "url" against it and builds URLs from it.
        headers = {
            name: value
            for name, value in handler.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "accept-encoding"
        }
        try:
            response = self._session().request(
                handler.command,
                self.upstream_origin + handler.path,
                headers=headers,
                data=body or None,
                verify=self.upstream_ca_bundle,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except requests.RequestException as err:
            problem = Problem(502, SERVER_INTERNAL, f"the ACME proxy cannot reach the CA: {err}")
            return problem.status, [("Content-Type", PROBLEM_JSON)], problem.body()
        answer = []
        for name, value in response.raw.headers.items():  # repeated Link headers stay apart
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() in ("location", "link"):
                value = self._rewrite(value)
            answer.append((name, value))
        payload = response.content
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type in _JSON_TYPES:
            payload = self._rewrite(payload.decode()).encode()
        return response.status_code, answer, payload

    def _rewrite(self, text: str) -> str:
        return text.replace(self.upstream_origin, self.origin)

    def _track(self, conn: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a CA answers; every answer has a length
    timeout = _IDLE_TIMEOUT

    @property
    def proxy(self) -> AcmeProxy:
        return cast(_Server, self.server).proxy

    def setup(self) -> None:
        super().setup()
        self.proxy._track(self.connection, open_=True)
        cast(ssl.SSLSocket, self.connection).do_handshake()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.proxy._track(self.connection, open_=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.proxy.handle(self)

    do_HEAD = do_GET  # noqa: N815
    do_POST = do_GET  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: AcmeProxy, context: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.proxy = proxy
        # The handshake happens in each connection's thread, on its first read.
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up, or refusing our certificate, is not the test's business.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

"""A stub DNS server for Pebble, the pre-flight and the TLSA checks: every name resolves to
127.0.0.1 over IPv4 only, unless a test chooses its addresses; TLSA records are those a test
sets."""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import struct
import threading
from typing import Any

QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_TLSA = 52
QCLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4

_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080
_OPCODE_MASK = 0x7800
# A DNS message over TCP is at most 65535 bytes; over UDP we accept what a datagram can carry.
_MAX_MESSAGE = 65535


class _Malformed(Exception):
    """The packet is not a DNS query we can answer; it is dropped."""


def _parse_question(packet: bytes) -> tuple[int, int, str, int, int, int]:
    """Return ``(id, flags, name, qtype, qclass, end_offset)`` of a one-question query."""
    if len(packet) < _HEADER.size:
        raise _Malformed("short header")
    msg_id, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(packet)
    if flags & _FLAG_QR or qdcount != 1:
        # A response, or a query shape no real resolver sends: not worth answering.
        raise _Malformed("not a single-question query")
    labels: list[str] = []
    offset = _HEADER.size
    while True:
        if offset >= len(packet):
            raise _Malformed("truncated name")
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            # Compression pointers (and the reserved label types) never appear in a question.
            raise _Malformed("label type not allowed in a question")
        label = packet[offset : offset + length]
        if len(label) != length:
            raise _Malformed("truncated label")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length
    if offset + 4 > len(packet):
        raise _Malformed("truncated question")
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    return msg_id, flags, ".".join(labels).lower(), qtype, qclass, offset + 4


class DnsResponder:
    """Threaded UDP + TCP DNS stub on one loopback port.

    A queries get ``ipv4`` (TTL 0); TLSA queries get the records of :attr:`tlsa` (name ->
    ``(usage, selector, matching type, hex data)`` tuples); every other query type, and a
    TLSA query for a name without records, gets NOERROR with no data, so
    Pebble, which asks AAAA first, validates over IPv4. Names added to :attr:`nxdomain`
    (lower case, no trailing dot) get NXDOMAIN; names in :attr:`silent` get no answer at
    all (a dead name server: the CA's validation hangs until its own timeout). Every
    answered query is appended to :attr:`queries` as ``(transport, name, qtype)``, every
    query left unanswered to :attr:`unanswered`: a test learns that the CA is validating.
    Names in :attr:`addresses` get exactly those addresses instead (IPv4 ones for A, IPv6
    ones for AAAA; an empty list: the name exists without any address). A name in
    :attr:`answers_left` gets that many more answers, then none: the pre-flight (which asks
    A and AAAA before any order) passes, and the CA's validation that follows hangs.
    """

    def __init__(self, host: str = "127.0.0.1", *, ipv4: str = "127.0.0.1") -> None:
        self.host = host
        self._answer = ipaddress.IPv4Address(ipv4).packed
        self.nxdomain: set[str] = set()
        self.silent: set[str] = set()
        self.addresses: dict[str, list[str]] = {}
        self.answers_left: dict[str, int] = {}
        self.tlsa: dict[str, list[tuple[int, int, int, str]]] = {}
        self._count_lock = threading.Lock()
        self.queries: list[tuple[str, str, int]] = []
        self.unanswered: list[tuple[str, str, int]] = []
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- protocol ---------------------------------------------------------------------------

    def respond(self, packet: bytes, transport: str = "udp") -> bytes | None:
        """Build the reply to ``packet``, or None to drop it."""
        try:
            msg_id, flags, name, qtype, qclass, end = _parse_question(packet)
        except _Malformed:
            return None
        if name.rstrip(".") in self.silent or self._exhausted(name.rstrip(".")):
            self.unanswered.append((transport, name, qtype))
            return None
        self.queries.append((transport, name, qtype))
        question = packet[_HEADER.size : end]  # echoed byte for byte: resolvers compare it
        answers = b""
        records: list[bytes] = []
        if flags & _OPCODE_MASK:
            rcode = RCODE_NOTIMP
        elif name.rstrip(".") in self.nxdomain:
            rcode = RCODE_NXDOMAIN
        else:
            rcode = RCODE_NOERROR
            records = self._records(name.rstrip("."), qtype) if qclass == QCLASS_IN else []
            for packed in records:
                # 0xC00C points at the question's name, right after the 12-byte header.
                answers += struct.pack("!HHHIH", 0xC00C, qtype, QCLASS_IN, 0, len(packed)) + packed
        reply_flags = _FLAG_QR | _FLAG_AA | _FLAG_RA | (flags & (_OPCODE_MASK | _FLAG_RD)) | rcode
        header = _HEADER.pack(msg_id, reply_flags, 1, len(records), 0, 0)
        return header + question + answers

    def _exhausted(self, name: str) -> bool:
        """Whether ``name`` has used up its :attr:`answers_left` (counting this query)."""
        with self._count_lock:
            left = self.answers_left.get(name)
            if left is None:
                return False
            self.answers_left[name] = left - 1
            return left <= 0

    def _records(self, name: str, qtype: int) -> list[bytes]:
        """The packed addresses (or TLSA records) answering ``qtype`` for ``name``."""
        if qtype == QTYPE_TLSA:
            return [
                struct.pack("!BBB", usage, selector, matching) + bytes.fromhex(data)
                for usage, selector, matching, data in self.tlsa.get(name, [])
            ]
        chosen = self.addresses.get(name)
        if chosen is None:
            return [self._answer] if qtype == QTYPE_A else []
        version = {QTYPE_A: 4, QTYPE_AAAA: 6}.get(qtype)
        parsed = [ipaddress.ip_address(address) for address in chosen]
        return [address.packed for address in parsed if address.version == version]

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._udp is None:
            raise RuntimeError("DnsResponder is not started")
        return int(self._udp.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, the form ``pebble -dnsserver`` expects."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsResponder:
        if self._udp is not None:
            return self
        responder = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = responder.respond(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(5)
                try:
                    # One connection may carry several length-prefixed queries.
                    while True:
                        size = _recv_exact(conn, 2)
                        if size is None:
                            return
                        data = _recv_exact(conn, struct.unpack("!H", size)[0])
                        if data is None:
                            return
                        reply = responder.respond(data, "tcp")
                        if reply is None:
                            return
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        # UDP and TCP must share one port (``-dnsserver`` takes a single address): take a free
        # UDP port, then try to bind TCP to the same number, retrying on the rare collision.
        for _attempt in range(50):
            udp = _UdpServer((self.host, 0), Udp)
            try:
                tcp = _TcpServer((self.host, udp.server_address[1]), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError(f"no port free for both UDP and TCP on {self.host}")
        self._udp, self._tcp = udp, tcp
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-{type(server).__name__}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both listeners; safe to call twice."""
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> DnsResponder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    max_packet_size = _MAX_MESSAGE


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Exceptions in handlers are already contained; keep socketserver from printing tracebacks
    # for clients that hang up mid-query.

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks

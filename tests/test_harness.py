"""The real-server harness: each server starts, answers and really stops."""

from __future__ import annotations

import datetime
import os
import random
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from modoboa_pro.testing import (
    AcmeProxy,
    DnsResponder,
    HarnessError,
    ManagedProcess,
    NginxServer,
    PebbleServer,
    RedisServer,
    RenewalAnswer,
    already_replaced,
    make_ca,
    make_self_signed_leaf,
    make_server_cert,
    rate_limited,
    validity,
    window,
)

pytestmark = pytest.mark.harness


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _dns_query(name: str, qtype: int, port: int, *, tcp: bool = False) -> tuple[int, int, bytes]:
    """Send one query; return (flags, answer count, raw reply) after checking the ID."""
    msg_id = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 0) + question
    query += struct.pack("!HH", qtype, 1)
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", sock.recv(2))[0]
            reply = sock.recv(size)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(query, ("127.0.0.1", port))
            reply = sock.recv(4096)
    reply_id, flags, qdcount, ancount = struct.unpack("!HHHH", reply[:8])
    assert reply_id == msg_id and qdcount == 1
    assert reply[12 : 12 + len(question) + 4] == query[12:]  # question echoed as sent
    return flags, ancount, reply


# -- pki ---------------------------------------------------------------------------------------


def test_pki_server_cert_and_crafted_chain(tmp_path: Path) -> None:
    ca_cert, ca_key = make_ca(tmp_path)
    cert_path, key_path = make_server_cert(tmp_path, ca_cert, ca_key)
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]

    not_before, not_after = validity(
        lifetime=datetime.timedelta(days=90), remaining=datetime.timedelta(days=5)
    )
    fullchain, key = make_self_signed_leaf(
        tmp_path / "host", ["www.example.test"], not_before=not_before, not_after=not_after
    )
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    leaf, issuer = x509.load_pem_x509_certificates(fullchain.read_bytes())
    assert leaf.issuer == issuer.subject
    assert leaf.not_valid_after_utc == not_after.replace(microsecond=0)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(days=90)


# -- redis -------------------------------------------------------------------------------------


def test_redis_over_unix_socket(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with server:
        assert server.url == f"unix://{server.socket_path}?db=0"
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o700
        client = server.client()
        assert client.ping()
        client.set("greeting", b"hello")
        assert client.get("greeting") == b"hello"
        client.close()
        pid = server.pid
        assert pid is not None
    assert _gone(pid)
    assert not server.socket_path.exists()
    server.stop()  # idempotent


# -- dns ---------------------------------------------------------------------------------------


def test_dns_responder() -> None:
    with DnsResponder() as dns:
        assert dns.address == f"127.0.0.1:{dns.port}"
        flags, ancount, reply = _dns_query("WWW.Example.test", 1, dns.port)
        assert flags & 0x8000 and flags & 0x0080 and flags & 0xF == 0  # QR, RA, NOERROR
        assert ancount == 1
        ttl, rdlength = struct.unpack("!IH", reply[-10:-4])
        assert (ttl, socket.inet_ntoa(reply[-4:])) == (0, "127.0.0.1")

        flags, ancount, _ = _dns_query("www.example.test", 28, dns.port)  # AAAA
        assert (flags & 0xF, ancount) == (0, 0)

        dns.nxdomain.add("gone.example.test")
        flags, ancount, _ = _dns_query("Gone.example.test", 1, dns.port)
        assert (flags & 0xF, ancount) == (3, 0)

        # Garbage is dropped and does not disturb the next query.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\xff" * 7, ("127.0.0.1", dns.port))
            sock.sendto(b"\x00" * 12 + b"\x3f", ("127.0.0.1", dns.port))
        flags, ancount, _ = _dns_query("www.example.test", 1, dns.port, tcp=True)
        assert (flags & 0xF, ancount) == (0, 1)
        assert ("tcp", "www.example.test", 1) in dns.queries

        # A silent name gets no answer; the query is noted as left unanswered.
        dns.silent.add("dead.example.test")
        with pytest.raises(TimeoutError):
            _dns_query("dead.example.test", 1, dns.port)
        assert dns.unanswered == [("udp", "dead.example.test", 1)]
    dns.stop()


def test_dns_responder_chosen_addresses_and_answers_left() -> None:
    """What the pre-flight tests rely on, read by dnspython as the plugin reads it."""
    import dns.resolver

    with DnsResponder() as stub:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], stub.port, 1.0

        def ask(name: str, rdtype: str) -> list[str]:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
            return [r.to_text() for r in answer]

        stub.addresses["two.example.test"] = ["127.0.0.2", "::1", "127.0.0.3"]
        assert ask("two.example.test", "A") == ["127.0.0.2", "127.0.0.3"]
        assert ask("two.example.test", "AAAA") == ["::1"]
        stub.addresses["none.example.test"] = []
        assert ask("none.example.test", "A") == ask("none.example.test", "AAAA") == []
        assert ask("other.example.test", "A") == ["127.0.0.1"]  # the default is untouched

        stub.answers_left["later.example.test"] = 2
        assert ask("later.example.test", "A") == ["127.0.0.1"]
        assert ask("later.example.test", "AAAA") == []
        with pytest.raises(dns.exception.Timeout):
            ask("later.example.test", "A")
        assert ("udp", "later.example.test", 1) in stub.unanswered


# -- nginx -------------------------------------------------------------------------------------


def test_nginx_serves_a_site_after_reload(tmp_path_factory: pytest.TempPathFactory) -> None:
    webroot = tmp_path_factory.mktemp("webroot")
    (webroot / "hello.txt").write_text("hello from nginx\n")
    nginx = NginxServer(tmp_path_factory.mktemp("nginx"))
    with nginx:
        url = f"http://127.0.0.1:{nginx.http_port}/hello.txt"
        headers = {"Host": "www.example.test", "User-Agent": "harness-test"}
        assert requests.get(url, headers=headers, timeout=5).status_code == 404

        (nginx.sites_dir / "www.example.test.conf").write_text(
            f"server {{\n  listen 127.0.0.1:{nginx.http_port};\n"
            f"  server_name www.example.test;\n  root {webroot};\n}}\n"
        )
        assert subprocess.run(nginx.test_command, capture_output=True).returncode == 0
        nginx.reload()
        response = requests.get(url, headers=headers, timeout=5)
        assert (response.status_code, response.text) == (200, "hello from nginx\n")
        # Both requests, in whichever order their workers wrote them: the old worker may
        # write its line after the new one (CI once saw it, on a loaded machine).
        logged = sorted(
            (e.host, e.uri, e.status, e.user_agent) for e in nginx.access_log_entries()
        )
        assert logged == [
            ("www.example.test", "/hello.txt", 200, "harness-test"),
            ("www.example.test", "/hello.txt", 404, "harness-test"),
        ]
        assert all("www.example.test" in line for line in nginx.access_log_lines())

        # A broken site is refused; the running configuration keeps serving.
        (nginx.sites_dir / "broken.conf").write_text("server { bogus; }\n")
        with pytest.raises(HarnessError, match="bogus"):
            nginx.reload()
        assert requests.get(url, headers=headers, timeout=5).status_code == 200

        processes = {nginx.pid, *(worker.pid for worker in nginx.workers())}
    assert all(_gone(pid) for pid in processes if pid is not None)


def test_nginx_start_failure_shows_the_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    nginx = NginxServer(tmp_path_factory.mktemp("nginx"))
    (nginx.sites_dir / "broken.conf").write_text("server { bogus; }\n")
    with pytest.raises(HarnessError, match='unknown directive "bogus"'):
        nginx.start()
    assert not nginx.running


# -- pebble ------------------------------------------------------------------------------------


def test_pebble_directory_and_roots(tmp_path_factory: pytest.TempPathFactory) -> None:
    with DnsResponder() as dns:
        pebble = PebbleServer(
            tmp_path_factory.mktemp("pebble"), http_port=5002, dns_address=dns.address
        )
        with pebble:
            directory = requests.get(
                pebble.directory_url, verify=str(pebble.ca_bundle), timeout=5
            ).json()
            assert directory["newOrder"].startswith("https://127.0.0.1:")
            root = x509.load_pem_x509_certificate(pebble.issuing_roots_pem())
            intermediate = x509.load_pem_x509_certificate(pebble.issuing_intermediates_pem())
            assert intermediate.issuer == root.subject
            pid = pebble.pid
            assert pid is not None
        assert _gone(pid)
        pebble.stop()


def test_acme_proxy_forwards_refuses_and_counts(tmp_path_factory: pytest.TempPathFactory) -> None:
    import josepy as jose
    from acme import client, messages
    from cryptography.hazmat.primitives.asymmetric import ec

    with DnsResponder() as dns:
        pebble = PebbleServer(
            tmp_path_factory.mktemp("pebble"), http_port=5002, dns_address=dns.address
        )
        with (
            pebble,
            AcmeProxy(
                tmp_path_factory.mktemp("proxy"), pebble.directory_url, pebble.ca_bundle
            ) as proxy,
        ):
            verify, directory_url = str(proxy.ca_bundle), proxy.directory_url
            directory = requests.get(directory_url, verify=verify, timeout=5).json()
            urls = [v for v in directory.values() if isinstance(v, str) and "://" in v]
            assert urls and all(u.startswith(f"{proxy.origin}/") for u in urls)

            # A whole account registration through it: JWS URLs, nonces and Location agree.
            key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
            net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=verify)  # type: ignore[arg-type]
            acme = client.ClientV2(client.ClientV2.get_directory(proxy.directory_url, net), net)
            regr = acme.new_account(
                messages.NewRegistration.from_data(terms_of_service_agreed=True)
            )
            assert regr.uri.startswith(f"{proxy.origin}/")

            # Told to, it answers newOrder itself, once, as a rate-limiting CA does.
            proxy.refuse("newOrder", rate_limited("too many new orders", "3600"), times=1)
            answer = requests.post(directory["newOrder"], data=b"{}", verify=verify, timeout=5)
            assert answer.status_code == 429
            assert answer.headers["Content-Type"] == "application/problem+json"
            assert answer.headers["Retry-After"] == "3600"
            assert answer.headers["Replay-Nonce"]
            assert answer.json() == {
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders",
                "status": 429,
            }
            # The next one reaches Pebble, which refuses an unsigned body in its own words.
            answer = requests.post(directory["newOrder"], data=b"{}", verify=verify, timeout=5)
            assert answer.status_code == 415 and "rateLimited" not in answer.text
            assert (proxy.count("newOrder", refused=True), proxy.count("newOrder")) == (1, 2)
            with pytest.raises(ValueError, match="unknown ACME resource"):
                proxy.refuse("newOrdr", rate_limited("typo", "1"))
        with pytest.raises(requests.ConnectionError):  # stopped: nothing listens any more
            requests.get(directory_url, verify=verify, timeout=5)


# -- process control ---------------------------------------------------------------------------


class _Stubborn(ManagedProcess):
    """Ignores SIGTERM, to prove stop() escalates."""

    name = "stubborn"
    stop_timeout = 0.5

    def command(self) -> list[str]:
        return ["sh", "-c", "trap '' TERM; touch ready; while :; do sleep 0.1; done"]

    def ready(self) -> bool:
        return (self.workdir / "ready").exists()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    process = _Stubborn(tmp_path)
    process.start()
    pid = process.pid
    assert pid is not None
    started = time.monotonic()
    process.stop()
    assert _gone(pid)
    assert time.monotonic() - started < 5


# -- together ----------------------------------------------------------------------------------


def test_pebble_validates_http01_through_dns_and_nginx(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The wiring the pipeline relies on: Pebble -> DnsResponder -> nginx on ``http_port``."""
    import josepy as jose
    from acme import challenges, client, crypto_util, messages
    from cryptography.hazmat.primitives.asymmetric import rsa

    webroot = tmp_path_factory.mktemp("webroot")
    challenge_dir = webroot / ".well-known" / "acme-challenge"
    challenge_dir.mkdir(parents=True)
    with DnsResponder() as dns, NginxServer(tmp_path_factory.mktemp("nginx")) as nginx:
        (nginx.sites_dir / "www.example.test.conf").write_text(
            f"server {{\n  listen 127.0.0.1:{nginx.http_port};\n"
            f"  server_name www.example.test;\n  root {webroot};\n}}\n"
        )
        nginx.reload()
        pebble = PebbleServer(
            tmp_path_factory.mktemp("pebble"), http_port=nginx.http_port, dns_address=dns.address
        )
        with pebble:
            account_key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
            # acme types verify_ssl as bool, but passes it to requests as verify=: a path works.
            net = client.ClientNetwork(account_key, verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
            acme = client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, net), net)
            acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            _, key_path = make_self_signed_leaf(webroot.parent / "csr", ["www.example.test"])
            order = acme.new_order(
                crypto_util.make_csr(key_path.read_bytes(), ["www.example.test"])
            )
            (authz,) = order.authorizations
            (challb,) = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            response, validation = challb.response_and_validation(account_key)
            (challenge_dir / challb.chall.encode("token")).write_text(validation)
            acme.answer_challenge(challb, response)
            deadline = time.monotonic() + 10
            while authz.body.status not in (messages.STATUS_VALID, messages.STATUS_INVALID):
                assert time.monotonic() < deadline, "Pebble did not validate in time"
                time.sleep(0.05)
                authz, _ = acme.poll(authz)
            assert authz.body.status == messages.STATUS_VALID
    fetches = [e for e in nginx.access_log_entries() if "/acme-challenge/" in e.uri]
    assert fetches and {(e.host, e.status) for e in fetches} == {("www.example.test", 200)}
    assert all(e.user_agent.startswith("LetsEncrypt-Pebble-VA") for e in fetches)
    assert ("udp", "www.example.test", 28) in dns.queries  # AAAA asked, answered empty


def add(a: int, b: int) -> int:
    return a + b


def test_job_round_trip_through_redis(redis_server, db):
    """A job enqueued on the modoboa queue runs in a burst worker and returns its result."""
    import django_rq
    from rq import SimpleWorker

    queue = django_rq.get_queue("modoboa")
    assert queue.connection.connection_pool.connection_kwargs["path"] == str(
        redis_server.socket_path
    )
    job = queue.enqueue(add, 2, 3)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    assert job.get_status(refresh=True) == "finished"
    assert job.return_value() == 5


def test_acme_proxy_plays_ari_in_front_of_pebble(tmp_path_factory: pytest.TempPathFactory) -> None:
    """renewalInfo in the directory, windows answered per certificate id, newOrder payloads
    recorded, ``replaces`` accepted by Pebble 2.4 as it is, one 409 alreadyReplaced."""
    import josepy as jose
    from acme import client, messages
    from acme import errors as acme_errors
    from cryptography.hazmat.primitives.asymmetric import ec

    class Payload(jose.JSONDeSerializable):
        def __init__(self, data: dict) -> None:
            self.data = data

        def to_partial_json(self) -> dict:
            return self.data

        @classmethod
        def from_json(cls, jobj: dict) -> Payload:
            return cls(jobj)

    start = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    with DnsResponder() as dns:
        pebble = PebbleServer(
            tmp_path_factory.mktemp("pebble"), http_port=5002, dns_address=dns.address
        )
        with (
            pebble,
            AcmeProxy(
                tmp_path_factory.mktemp("proxy"),
                pebble.directory_url,
                pebble.ca_bundle,
                renewal_info=True,
            ) as proxy,
        ):
            verify = str(proxy.ca_bundle)
            directory = requests.get(proxy.directory_url, verify=verify, timeout=5).json()
            base = directory["renewalInfo"]
            assert base == f"{proxy.origin}/renewal-info" and "newOrder" in directory

            proxy.set_renewal_info(
                "a.b",
                window(
                    start,
                    start + datetime.timedelta(days=2),
                    retry_after="21600",
                    explanation_url="https://ca.example/incident",
                ),
            )
            answer = requests.get(f"{base}/a.b", verify=verify, timeout=5)
            assert answer.status_code == 200 and answer.headers["Retry-After"] == "21600"
            assert answer.json() == {
                "suggestedWindow": {"start": "2030-01-02T03:04:05Z", "end": "2030-01-04T03:04:05Z"},
                "explanationURL": "https://ca.example/incident",
            }
            # An unknown id: 404 as a CA answers; then a default answer, here malformed.
            assert requests.get(f"{base}/x.y", verify=verify, timeout=5).status_code == 404
            proxy.set_renewal_info(None, RenewalAnswer('{"suggestedWindow": "soon"}'))
            assert requests.get(f"{base}/x.y", verify=verify, timeout=5).json() == {
                "suggestedWindow": "soon"
            }
            backwards = window(start, start - datetime.timedelta(hours=1))
            assert '"end": "2030-01-02T02:04:05Z"' in backwards.body  # sent as the test says
            assert proxy.renewal_info_asked() == ["a.b", "x.y", "x.y"]

            key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
            net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=verify)  # type: ignore[arg-type]
            acme = client.ClientV2(client.ClientV2.get_directory(proxy.directory_url, net), net)
            acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            order = {
                "identifiers": [{"type": "dns", "value": "ari.example.com"}],
                "replaces": "a.b",
                "profile": "shortlived",
            }
            # Pebble 2.4 takes an order carrying fields it does not know.
            assert acme._post(directory["newOrder"], Payload(order)).status_code == 201
            proxy.refuse("newOrder", already_replaced(), times=1)
            # The library turns every 409 into ConflictError (hence the client's fallback
            # on 409 itself); the answer is the CA's problem document all the same.
            with pytest.raises(acme_errors.ConflictError):
                acme._post(directory["newOrder"], Payload(order))
            signed = proxy.exchanges[-1]
            assert (signed.status, signed.refused) == (409, True)
            assert acme._post(directory["newOrder"], Payload(order)).status_code == 201
            assert [(o.get("replaces"), o.get("profile")) for o in proxy.orders()] == [
                ("a.b", "shortlived")
            ] * 3
            assert proxy.count("newOrder", refused=True) == 1

"""Scenario 1: creation to served, ours against ``certbot certonly --webroot`` and the floor.

Each sample starts before the first action (the API call; Certbot's command; the first ACME
request) and ends when a TLS handshake on nginx's HTTPS port sees the new certificate.
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.probe import POLL_SECONDS, wait_served
from bench.stack import BenchStack
from modoboa_pro.testing.servers import WORKER_PROCESSES
from modoboa_pro.virtualhosts.adapters import nginx_processes

ACME_TIMEOUT = datetime.timedelta(seconds=60)
# The floor's poll interval: as tight as a careful client would go on loopback.
FLOOR_POLL_SECONDS = 0.005


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "samples_s": [round(s, 4) for s in self.seconds],
            "median_s": round(statistics.median(self.seconds), 4),
            "min_s": round(min(self.seconds), 4),
            "max_s": round(max(self.seconds), 4),
        }


# -- ours ---------------------------------------------------------------------------------


def ours_once(stack: BenchStack, hostname: str) -> tuple[float, float]:
    """POST the host, handshake until served; (seconds to served, seconds to API 'active')."""
    began = time.monotonic()
    host = stack.demo.api.create_virtualhost(hostname)
    _, served_at = wait_served(stack.nginx.https_port, hostname, workers=stack.nginx.workers)
    while stack.demo.api.virtualhost(host["id"])["status"] != "active":
        time.sleep(0.01)
    return served_at - began, time.monotonic() - began


# -- Certbot ------------------------------------------------------------------------------


class Certbot:
    """``certbot`` from its own virtualenv, with its directories under ``root``."""

    def __init__(self, binary: Path, root: Path, stack: BenchStack) -> None:
        self.binary = binary
        self.root = root
        self.stack = stack
        self.env = {**os.environ, "REQUESTS_CA_BUNDLE": str(stack.pebble.ca_bundle)}

    def args(self, *extra: str) -> list[str]:
        return [
            str(self.binary),
            *extra,
            "--config-dir", str(self.root / "config"),
            "--work-dir", str(self.root / "work"),
            "--logs-dir", str(self.root / "logs"),
            "--server", self.stack.pebble.directory_url,
            "--non-interactive",
        ]  # fmt: skip

    def run(self, *extra: str) -> float:
        began = time.monotonic()
        result = subprocess.run(
            self.args(*extra), env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"certbot {' '.join(extra[:2])} failed:\n{result.stderr[-2000:]}")
        return time.monotonic() - began

    def register(self) -> None:
        self.run("register", "--agree-tos", "--register-unsafely-without-email")

    def certonly(self, hostname: str) -> None:
        self.run("certonly", "--webroot", "-w", str(self.stack.webroot), "-d", hostname)

    def live(self, hostname: str) -> tuple[Path, Path]:
        live = self.root / "config" / "live" / hostname
        return live / "fullchain.pem", live / "privkey.pem"


def certbot_once(certbot: Certbot, hostname: str) -> float:
    stack = certbot.stack
    began = time.monotonic()
    certbot.certonly(hostname)
    stack.write_https_site(hostname, *certbot.live(hostname))
    stack.reload_nginx()
    _, served_at = wait_served(stack.nginx.https_port, hostname, workers=stack.nginx.workers)
    return served_at - began


# -- the protocol floor ---------------------------------------------------------------------


class Floor:
    """The ``acme`` library in-process: one account, then order, answer, finalize, store."""

    def __init__(self, stack: BenchStack, root: Path) -> None:
        self.stack = stack
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        # ClientNetwork hands verify_ssl to requests, which takes a CA bundle path too.
        net = client.ClientNetwork(
            key, alg=jose.ES256, verify_ssl=str(stack.pebble.ca_bundle),  # type: ignore[arg-type]
            user_agent="modoboa-pro-bench-floor",
        )  # fmt: skip
        directory = client.ClientV2.get_directory(stack.pebble.directory_url, net)
        self.acme = client.ClientV2(directory, net)
        self.acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        self.protocol_seconds: list[float] = []

    def issue(self, hostname: str) -> tuple[Path, Path]:
        """One certificate, polling every FLOOR_POLL_SECONDS; the stored (fullchain, key)."""
        began = time.monotonic()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = self.acme.new_order(crypto_util.make_csr(key_pem, [hostname]))
        account_key = self.acme.net.key
        assert account_key is not None  # set in __init__
        for authz in order.authorizations:
            for challb in authz.body.challenges:
                if isinstance(challb.chall, challenges.HTTP01):
                    response, validation = challb.chall.response_and_validation(account_key)
                    path = self.stack.webroot / challb.chall.path.lstrip("/")
                    path.write_text(validation)
                    self.acme.answer_challenge(challb, response)
            while True:
                authz = self.acme.poll(authz)[0]
                if authz.body.status != messages.STATUS_PENDING:
                    break
                time.sleep(FLOOR_POLL_SECONDS)
            if authz.body.status != messages.STATUS_VALID:
                raise RuntimeError(f"floor: {hostname}: authorization {authz.body.status}")
        order = self.acme.begin_finalization(order)
        deadline = time.monotonic() + ACME_TIMEOUT.total_seconds()
        while True:
            # The library's own poll_finalization sleeps a whole second before each look.
            body = messages.Order.from_json(self.acme._post_as_get(order.uri).json())  # noqa: SLF001
            if body.status == messages.STATUS_VALID and body.certificate:
                fullchain = self.acme._post_as_get(body.certificate).text  # noqa: SLF001
                break
            if body.status == messages.STATUS_INVALID or time.monotonic() > deadline:
                raise RuntimeError(f"floor: {hostname}: order {body.status}")
            time.sleep(FLOOR_POLL_SECONDS)
        self.protocol_seconds.append(time.monotonic() - began)
        directory = self.root / hostname
        directory.mkdir(exist_ok=True)
        (directory / "fullchain.pem").write_text(fullchain)
        (directory / "privkey.pem").write_bytes(key_pem)
        (directory / "privkey.pem").chmod(0o600)
        return directory / "fullchain.pem", directory / "privkey.pem"


def floor_once(floor: Floor, hostname: str) -> float:
    stack = floor.stack
    began = time.monotonic()
    stack.write_https_site(hostname, *floor.issue(hostname))
    stack.reload_nginx()
    _, served_at = wait_served(stack.nginx.https_port, hostname, workers=stack.nginx.workers)
    return served_at - began


# -- the scenario ---------------------------------------------------------------------------

IDLE_TIMEOUT = 30.0


def idle_nginx(stack: BenchStack) -> None:
    """Wait until the previous sample's reload has handed over: one worker, none retiring.

    A sample ends when a handshake sees its certificate, from nginx's new worker, while the
    master still sleeps its 100 ms before stopping the old one; a reload signalled meanwhile
    waits for that: no sample pays for the previous one's reload.
    """
    deadline = time.monotonic() + IDLE_TIMEOUT
    while True:
        workers = stack.nginx.workers()
        if len(workers) == WORKER_PROCESSES and not any(
            nginx_processes.is_retiring(w) for w in workers
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nginx still hands over after {IDLE_TIMEOUT:.0f}s: {workers}")
        time.sleep(POLL_SECONDS)


def run(stack: BenchStack, runs: int, certbot_binary: Path | None, root: Path) -> dict:
    """``runs`` samples of each, interleaved so that load drifts hit all three alike."""
    ours, ours_active, certbot_s, floor_s = Samples(), Samples(), Samples(), Samples()
    floor = Floor(stack, root / "floor")
    certbot = Certbot(certbot_binary, root / "certbot", stack) if certbot_binary else None
    if certbot:
        certbot.register()
    # One warm-up each (imports, connections, the account's first order), not counted.
    ours_once(stack, "warm.ours.bench.test")
    floor_once(floor, "warm.floor.bench.test")
    if certbot:
        certbot_once(certbot, "warm.certbot.bench.test")
    floor.protocol_seconds.clear()
    for i in range(runs):
        idle_nginx(stack)
        served, active = ours_once(stack, f"s1-{i}.ours.bench.test")
        ours.seconds.append(served)
        ours_active.seconds.append(active)
        idle_nginx(stack)
        floor_s.seconds.append(floor_once(floor, f"s1-{i}.floor.bench.test"))
        if certbot:
            idle_nginx(stack)
            certbot_s.seconds.append(certbot_once(certbot, f"s1-{i}.certbot.bench.test"))
        print(
            f"  run {i + 1}/{runs}: ours {served:.3f}s (active {active:.3f}s), "
            f"floor {floor_s.seconds[-1]:.3f}s"
            + (f", certbot {certbot_s.seconds[-1]:.3f}s" if certbot else ""),
            flush=True,
        )
    result: dict[str, object] = {
        "runs": runs,
        "ours_served": ours.summary(),
        "ours_api_active": ours_active.summary(),
        "floor_served": floor_s.summary(),
        "floor_protocol_only": Samples(floor.protocol_seconds).summary(),
    }
    ratios = {
        "ours_over_floor": statistics.median(ours.seconds) / statistics.median(floor_s.seconds)
    }
    if certbot:
        result["certbot_served"] = certbot_s.summary()
        ratios["ours_over_certbot"] = statistics.median(ours.seconds) / statistics.median(
            certbot_s.seconds
        )
        ratios["certbot_over_floor"] = statistics.median(certbot_s.seconds) / statistics.median(
            floor_s.seconds
        )
    result["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
    result["targets"] = {
        "ours_over_floor_at_most": 4.0,
        "ours_over_certbot_at_most": 0.1,
        "met": {
            "ours_over_floor": ratios["ours_over_floor"] <= 4.0,
            **(
                {"ours_over_certbot": ratios["ours_over_certbot"] <= 0.1}
                if "ours_over_certbot" in ratios
                else {}
            ),
        },
    }
    return result

"""Garbage in a host's stored pair: found by the daily scan and by the deploy step, never
handed to nginx, replaced by a renewal.

Each variant damages ``certs/<host>/fullchain.pem`` or ``privkey.pem`` the way a disk, a
hand edit, a restore or another program could. Through the real chain (Redis, Pebble,
nginx), for every variant:

* at rest: the scan (the cron job's entry point) reports the host with the file and the
  problem, the renewal it queues replaces the pair, and nginx serves the new one;
* between storing and deploying: the deploy step refuses the pair, naming the file and the
  problem (every variant, on the deploy step's check itself); through the chain, for the
  variants that leave different things on disk, nginx keeps serving what it served (the
  previous certificate, or the HTTP-only site), and the retry deploys a good one.

Throughout, ``nginx -t`` never runs while an HTTPS site points at a pair it would refuse.
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from django.utils import timezone

from modoboa_pro.testing import make_chain_pem, validity
from modoboa_pro.virtualhosts import constants, jobs, pipeline, scan, services
from modoboa_pro.virtualhosts.adapters import nginx, storage, tls, x509
from modoboa_pro.virtualhosts.errors import DeployNotVerified, UnusablePair
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import BACKEND_BODY, Chain
from .test_failures import http_get, provision_active, retry_and_succeed
from .test_file_modes import audit
from .test_renewal import queued_renewals, renew_id, stand_in

pytestmark = [pytest.mark.chain, pytest.mark.damaged_pairs]

HOST = "damaged.example.test"
# How long a refused handshake is retried right after a reload (see ``served``).
HANDSHAKE_PATIENCE = 5.0
DAY = datetime.timedelta(days=1)
_END = b"-----END CERTIFICATE-----\n"


# -- the ways a stored pair goes bad -------------------------------------------------


def _files(root: Path, hostname: str) -> tuple[Path, Path]:
    return storage.certificate_paths(root, hostname)


def _blocks(fullchain: Path) -> list[bytes]:
    """The PEM blocks of a chain, each with its END line."""
    return [block + _END for block in fullchain.read_bytes().split(_END) if block.strip()]


def _write_pair(root: Path, hostname: str, fullchain: bytes, key: bytes) -> None:
    """Overwrite both files in place (their modes stay)."""
    chain_path, key_path = _files(root, hostname)
    chain_path.write_bytes(fullchain)
    key_path.write_bytes(key)


def _outside(root: Path) -> Path:
    """A directory next to the storage root, not under it."""
    place = root.parent / "elsewhere"
    place.mkdir(mode=0o700, exist_ok=True)
    return place


def truncate_leaf(root: Path, hostname: str) -> None:
    fullchain = _files(root, hostname)[0]
    leaf = _blocks(fullchain)[0]
    fullchain.write_bytes(leaf[: len(leaf) // 2])


def truncate_chain(root: Path, hostname: str) -> None:
    # The leaf is whole: only nginx, which reads the whole file, would notice.
    fullchain = _files(root, hostname)[0]
    leaf, issuer, *_ = _blocks(fullchain)
    fullchain.write_bytes(leaf + issuer[: len(issuer) // 2])


def fullchain_der(root: Path, hostname: str) -> None:
    fullchain = _files(root, hostname)[0]
    leaf = cx509.load_pem_x509_certificate(_blocks(fullchain)[0])
    fullchain.write_bytes(leaf.public_bytes(serialization.Encoding.DER))


def fullchain_empty(root: Path, hostname: str) -> None:
    _files(root, hostname)[0].write_bytes(b"")


def fullchain_missing(root: Path, hostname: str) -> None:
    _files(root, hostname)[0].unlink()


def privkey_truncated(root: Path, hostname: str) -> None:
    key = _files(root, hostname)[1]
    key.write_bytes(key.read_bytes()[:100])


def privkey_not_pem(root: Path, hostname: str) -> None:
    _files(root, hostname)[1].write_bytes(b"this is not a private key\n")


def privkey_empty(root: Path, hostname: str) -> None:
    _files(root, hostname)[1].write_bytes(b"")


def privkey_missing(root: Path, hostname: str) -> None:
    _files(root, hostname)[1].unlink()


def key_mismatch(root: Path, hostname: str) -> None:
    _files(root, hostname)[1].write_bytes(x509.generate_private_key())


def other_name(root: Path, hostname: str) -> None:
    # A whole, valid pair, for another host.
    not_before, not_after = validity(remaining=60 * DAY)
    _write_pair(
        root,
        hostname,
        *make_chain_pem(["other.example.test"], not_before=not_before, not_after=not_after),
    )


def expired(root: Path, hostname: str) -> None:
    not_before, not_after = validity(remaining=-DAY)
    _write_pair(
        root, hostname, *make_chain_pem([hostname], not_before=not_before, not_after=not_after)
    )


def ed25519_pair(root: Path, hostname: str) -> None:
    # A pair that matches and names the host, with a key type this product never makes.
    key = ed25519.Ed25519PrivateKey.generate()
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = timezone.now()
    cert = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 60 * DAY)
        .add_extension(cx509.SubjectAlternativeName([cx509.DNSName(hostname)]), critical=False)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_pair(root, hostname, cert.public_bytes(serialization.Encoding.PEM), key_pem)


def wrong_order(root: Path, hostname: str) -> None:
    fullchain = _files(root, hostname)[0]
    leaf, *issuers = _blocks(fullchain)
    fullchain.write_bytes(b"".join(issuers) + leaf)


def link_outside(root: Path, hostname: str) -> None:
    # certs/<host> re-pointed at a copy of a good pair outside the storage directory: if it
    # were followed, it would pass every other check.
    link = storage.certificate_paths(root, hostname)[0].parent
    copy = _outside(root) / "pair"
    shutil.copytree(link.resolve(), copy)
    link.unlink()
    link.symlink_to(copy)


def fullchain_link_outside(root: Path, hostname: str) -> None:
    fullchain = _files(root, hostname)[0].resolve()
    copy = _outside(root) / "fullchain.pem"
    shutil.copyfile(fullchain, copy)
    fullchain.unlink()
    fullchain.symlink_to(copy)


def privkey_readable(root: Path, hostname: str) -> None:
    _files(root, hostname)[1].chmod(0o644)


@dataclass(frozen=True)
class Variant:
    id: str
    damage: Callable[[Path, str], None]
    fault: int  # which file the operator is pointed at: 0 fullchain.pem, 1 privkey.pem
    words: tuple[str, ...]  # in the operator's message

    def path(self, root: Path) -> Path:
        return _files(root, HOST)[self.fault]


VARIANTS = [
    Variant("leaf-truncated", truncate_leaf, 0, ("truncated", "certificate 1")),
    Variant("chain-truncated", truncate_chain, 0, ("truncated", "certificate 2")),
    Variant("fullchain-der", fullchain_der, 0, ("not a PEM certificate",)),
    Variant("fullchain-empty", fullchain_empty, 0, ("the file is empty",)),
    Variant("fullchain-missing", fullchain_missing, 0, ("is missing",)),
    Variant("privkey-truncated", privkey_truncated, 1, ("the key is truncated",)),
    Variant("privkey-not-pem", privkey_not_pem, 1, ("not an unencrypted PEM private key",)),
    Variant("privkey-empty", privkey_empty, 1, ("the file is empty",)),
    Variant("privkey-missing", privkey_missing, 1, ("the private key is missing",)),
    Variant("key-mismatch", key_mismatch, 1, ("does not match the certificate",)),
    Variant("other-name", other_name, 0, (f"does not cover {HOST}", "other.example.test")),
    Variant("expired", expired, 0, ("expired on",)),
    Variant("ed25519-key", ed25519_pair, 1, ("Ed25519", "only ECDSA P-256 and RSA")),
    Variant("wrong-order", wrong_order, 0, ("wrong order", "number 2 of 2")),
    Variant("link-outside", link_outside, 0, ("outside", "was not read")),
    Variant("fullchain-link-outside", fullchain_link_outside, 0, ("outside", "was not read")),
    Variant("privkey-0644", privkey_readable, 1, ("mode 0644", "its mode is now 0600", "revoke")),
]

# The deploy step's check (``pipeline._usable_pair``) refuses every variant: see
# test_the_deploy_step_refuses_every_damaged_pair. What the chain does once it refused depends
# only on what the damage left on disk: a file missing, a link out of certs/, a mode the check
# repairs, or files that are there but wrong, whatever is wrong in them. One run through the
# chain for each of those, instead of one per variant (the other variants' refusal is the same
# run with another message).
THROUGH_THE_CHAIN = {
    "chain-truncated",  # files there, wrong: the leaf is whole, only nginx would notice
    "key-mismatch",  # files there, wrong: each parses, they do not match
    "fullchain-missing",
    "privkey-missing",
    "link-outside",
    "fullchain-link-outside",
    "privkey-0644",
}
DEPLOY_VARIANTS = [v for v in VARIANTS if v.id in THROUGH_THE_CHAIN]


# -- what an operator checks -------------------------------------------------------


def broken_pairs(chain: Chain) -> list[str]:
    """Problems of the pairs the HTTPS sites in nginx's directory point at, as found now."""
    found = []
    for site in sorted(chain.nginx.sites_dir.glob("*.conf")):
        if "ssl_certificate " not in site.read_text():
            continue  # an HTTP-only site loads no pair
        hostname = site.name.removesuffix(".conf")
        stored = storage.read_current(chain.storage, hostname, issued_serial="on-disk")
        if stored.problem is not None:
            found.append(stored.problem)
        elif stored.facts is not None and stored.facts.not_after <= timezone.now():
            found.append(f"{hostname}: expired")
    return found


@pytest.fixture
def nginx_tests(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `nginx -t` run, as the broken pairs it was fed (a spy; the real test runs)."""
    runs: list[list[str]] = []
    real = nginx.run_test

    def spy(argv: list[str], timeout: float = 60) -> str:
        runs.append(broken_pairs(chain))
        return real(argv, timeout)

    monkeypatch.setattr(nginx, "run_test", spy)
    return runs


def served(chain: Chain, hostname: str = HOST):
    """The certificate nginx serves for ``hostname``. A handshake refused outright is
    retried for a few seconds: right after a reload, on a loaded machine, a worker of the
    previous generation may still take a connection (a wrong certificate is not retried)."""
    deadline = time.monotonic() + HANDSHAKE_PATIENCE
    while True:
        try:
            return tls.fetch_served_certificate("127.0.0.1", chain.nginx.https_port, hostname)
        except DeployNotVerified:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_serves_the_stored_pair(chain: Chain, host: VirtualHost) -> None:
    """nginx serves the certificate on disk, whose key is the one next to it, for this name."""
    stored = storage.read_current(chain.storage, host.hostname, issued_serial=host.cert_serial)
    assert stored.problem is None and stored.facts is not None
    assert stored.facts.not_after > timezone.now()
    assert served(chain, host.hostname).fingerprint_sha256 == stored.facts.fingerprint_sha256
    assert stored.facts.serial == host.cert_serial


# -- at rest: the daily scan -------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_the_scan_reports_a_damaged_pair_and_a_renewal_replaces_it(
    chain: Chain, variant: Variant, nginx_tests: list[list[str]]
):
    # Issued earlier and served (a pair the CA issued is damaged at rest in
    # test_another_hosts_damaged_pair... and test_renew_now_on_a_damaged_pair...).
    host = stand_in(chain, HOST, remaining=60)
    chain.nginx.reload()
    before = served(chain)
    variant.damage(chain.storage, HOST)

    result = jobs.check_certificate_renewals()  # what the daily cron job runs
    listed = result["expired"] if variant.id == "expired" else result["unreadable"]
    assert listed == [HOST], result["summary"]
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert str(variant.path(chain.storage)) in host.last_error
    for words in variant.words:
        assert words in host.last_error
    assert renew_id(host) in queued_renewals()  # the renewal that replaces the pair
    assert served(chain).serial == before.serial  # nginx still has the pair it loaded

    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != before.serial
    assert_serves_the_stored_pair(chain, host)
    assert chain.failed_jobs() == []
    assert nginx_tests and all(run == [] for run in nginx_tests)
    if variant.id == "privkey-0644":
        # Made private by the scan at once: the replaced key too, kept for a rollback.
        assert audit(chain.storage) == []
    # The next scan finds nothing to say.
    result = jobs.check_certificate_renewals()
    assert (result["unreadable"], result["expired"], result["enqueued"]) == ([], [], [])


def test_the_scan_goes_on_past_damaged_pairs(chain: Chain):
    """Every variant at once, one host each, next to a healthy host: all reported, none
    stops the scan, the healthy one is left alone."""
    healthy = stand_in(chain, "healthy.example.test", remaining=60, site=False)
    hosts = {}
    for variant in VARIANTS:
        hostname = f"{variant.id}.example.test"
        hosts[hostname] = stand_in(chain, hostname, remaining=60, site=False)
        variant.damage(chain.storage, hostname)

    result = jobs.check_certificate_renewals()
    assert sorted(result["unreadable"] + result["expired"]) == sorted(hosts)
    assert sorted(result["enqueued"]) == sorted(hosts)
    for hostname, host in hosts.items():
        host.refresh_from_db()
        assert host.status == constants.STATUS_FAILED, hostname
        assert hostname in host.last_error  # each message names its own files
    healthy.refresh_from_db()
    assert healthy.status == constants.STATUS_ACTIVE and healthy.last_error == ""
    assert f"{len(VARIANTS) - 1} unreadable certificate file(s)" in result["summary"]
    assert "1 expired (expired.example.test)" in result["summary"]
    # The dry run reads the same files and writes nothing: the 0644 key is reported, not fixed.
    privkey_readable(chain.storage, "privkey-0644.example.test")
    report = scan.run(chain.storage, 30, None, dry_run=True)
    plan = {verdict.hostname: verdict for verdict in report.verdicts}
    assert "chmod 600" in plan["privkey-0644.example.test"].reason
    key = _files(chain.storage, "privkey-0644.example.test")[1]
    assert key.stat().st_mode & 0o777 == 0o644


# -- between storing and deploying: the deploy step --------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_the_deploy_step_refuses_every_damaged_pair(tmp_path: Path, variant: Variant):
    """The check the deploy step runs before nginx sees a pair, on a pair just stored and
    damaged: refused, naming the file and what is wrong with it (the host's last_error
    starts with this message; the chain tests below show the rest)."""
    root = tmp_path / "acme"
    not_before, not_after = validity(remaining=60 * DAY)
    fullchain, key = make_chain_pem([HOST], not_before=not_before, not_after=not_after)
    storage.write_certificate_pair(root, HOST, fullchain, key)
    variant.damage(root, HOST)
    with pytest.raises(UnusablePair) as refused:
        pipeline._usable_pair(
            SimpleNamespace(storage_root=root), HOST, x509.parse_leaf(fullchain).serial
        )
    assert str(variant.path(root)) in refused.value.message
    for words in variant.words:
        assert words in refused.value.message


@pytest.fixture
def damaged_on_store(monkeypatch: pytest.MonkeyPatch):
    """Make the pipeline's next stores leave a damaged pair (``variant``): as if the disk,
    or another program, spoiled it right after it was written. Returns the switch."""
    real = storage.write_certificate_pair
    state: dict[str, Variant | None] = {"variant": None}

    def write_then_damage(root: Path, hostname: str, fullchain: bytes, key: bytes) -> Path:
        version = real(root, hostname, fullchain, key)
        if state["variant"] is not None:
            state["variant"].damage(root, hostname)
        return version

    monkeypatch.setattr(storage, "write_certificate_pair", write_then_damage)
    return state


def assert_refused_before_deployment(chain: Chain, host: VirtualHost, variant: Variant) -> None:
    """The run failed at the deploy step, naming the damaged file and what is wrong with it."""
    host.refresh_from_db()
    assert host.status == constants.STATUS_FAILED
    assert host.failed_step == constants.STEP_HTTPS_SITE
    assert str(variant.path(chain.storage)) in host.last_error
    for words in variant.words:
        assert words in host.last_error


@pytest.mark.parametrize("variant", DEPLOY_VARIANTS, ids=lambda v: v.id)
def test_a_renewal_never_deploys_a_damaged_pair(
    chain: Chain, variant: Variant, nginx_tests: list[list[str]], damaged_on_store
):
    host = stand_in(chain, HOST, remaining=5)  # active, served, due for renewal
    chain.nginx.reload()
    before = served(chain)
    damaged_on_store["variant"] = variant

    assert jobs.check_certificate_renewals()["enqueued"] == [HOST]
    chain.drain()
    assert_refused_before_deployment(chain, host, variant)
    assert "Not deployed: the previous certificate was put back, and nginx keeps serving it" in (
        host.last_error
    )
    assert host.next_attempt_at is not None  # retried by itself
    # nginx serves what it served, and the pair on disk is one it can load again.
    assert served(chain).serial == before.serial
    stored = storage.read_current(chain.storage, HOST, issued_serial=host.cert_serial)
    assert stored.problem is None
    if variant.id != "link-outside":  # there, the link is pointed back at the new pair
        assert stored.facts is not None and stored.facts.serial == before.serial
    assert all(run == [] for run in nginx_tests)

    # The retry (its time has come) orders again and deploys a good pair.
    damaged_on_store["variant"] = None
    VirtualHost.objects.filter(pk=host.pk).update(
        next_attempt_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert jobs.retry_due_virtualhosts()["retried"] == [HOST]
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert host.cert_serial != before.serial
    assert_serves_the_stored_pair(chain, host)
    assert nginx_tests and all(run == [] for run in nginx_tests)
    assert chain.failed_jobs() == []


@pytest.mark.parametrize("variant", DEPLOY_VARIANTS, ids=lambda v: v.id)
def test_a_first_certificate_damaged_before_deployment_leaves_the_http_site(
    chain: Chain, variant: Variant, nginx_tests: list[list[str]], damaged_on_store
):
    damaged_on_store["variant"] = variant
    host = VirtualHost.objects.create(hostname=HOST)
    chain.drain()
    assert_refused_before_deployment(chain, host, variant)
    assert "Not deployed: nginx keeps serving the HTTP-only site" in host.last_error
    # The HTTP-only site is still the one in place, and serves the application.
    site = nginx.site_path(chain.nginx.sites_dir, HOST).read_text()
    assert "ssl_certificate" not in site
    assert http_get(chain, HOST).content == BACKEND_BODY
    assert all(run == [] for run in nginx_tests)

    damaged_on_store["variant"] = None
    retry_and_succeed(chain, host)
    assert_serves_the_stored_pair(chain, host)
    assert all(run == [] for run in nginx_tests)


# -- someone else's broken pair ----------------------------------------------------


def test_another_hosts_damaged_pair_is_named_and_does_not_undo_ours(chain: Chain):
    """A pair damaged at rest fails `nginx -t` for everyone until it is replaced: another
    host's run names the file and keeps its own work, and succeeds once the scan's renewal
    replaced the pair."""
    damaged = provision_active(chain, HOST)
    truncate_chain(chain.storage, HOST)
    fullchain = _files(chain.storage, HOST)[0]

    other = VirtualHost.objects.create(hostname="other.example.test")
    chain.drain()
    other.refresh_from_db()
    assert other.status == constants.STATUS_FAILED
    assert f"nginx -t fails because of {fullchain}, not because of the site of" in other.last_error
    assert f"It is the certificate of {HOST}" in other.last_error
    assert other.next_attempt_at is not None
    assert nginx.site_path(chain.nginx.sites_dir, other.hostname).exists()  # kept

    jobs.check_certificate_renewals()
    chain.drain()
    damaged.refresh_from_db()
    assert damaged.status == constants.STATUS_ACTIVE, damaged.last_error
    assert_serves_the_stored_pair(chain, damaged)
    retry_and_succeed(chain, other)
    assert_serves_the_stored_pair(chain, other)


def test_renew_now_on_a_damaged_pair_replaces_it(chain: Chain, nginx_tests: list[list[str]]):
    """The operator's button takes the same path as the scan: the damaged pair is replaced."""
    host = provision_active(chain, HOST)
    key_mismatch(chain.storage, HOST)
    services.renew_now(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert_serves_the_stored_pair(chain, host)
    assert all(run == [] for run in nginx_tests)

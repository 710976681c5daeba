"""ARI (RFC 9773) in the ACME adapter: the certificate identifier, reading a CA's window,
and ``replaces`` on newOrder with its fallback, against the ARI double in front of Pebble."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from acme import messages
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modoboa_pro.testing import (
    AcmeProxy,
    PebbleServer,
    Problem,
    RenewalAnswer,
    already_replaced,
    rate_limited,
    window,
)
from modoboa_pro.testing.acme_proxy import MALFORMED
from modoboa_pro.virtualhosts.adapters import acme, ari, x509
from modoboa_pro.virtualhosts.errors import RenewalInfoUnusable

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
START = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


def certificate_with(key_identifier: bytes | None, serial: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "ari.example.com")])
    builder = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + 90 * 24 * HOUR)
    )
    if key_identifier is not None:
        aki = cx509.AuthorityKeyIdentifier(key_identifier, None, None)
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# -- the certificate identifier (RFC 9773 4.1) -------------------------------------------------


def test_certificate_id_is_the_rfc_example() -> None:
    # RFC 9773 appendix A: keyIdentifier 69:88:5B..., serial 0x87654321 (00 87 65 43 21).
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    facts = x509.parse_leaf(certificate_with(aki, 0x87654321))
    assert facts.ari_id == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.mark.parametrize(
    ("serial", "encoded"),
    [(0x7F, "fw"), (0x80, "AIA"), (0x0100, "AQA"), (0xFF01, "AP8B")],
)
def test_certificate_id_serial_is_its_der_integer(serial: int, encoded: str) -> None:
    facts = x509.parse_leaf(certificate_with(b"\x01\x02", serial))
    assert facts.ari_id == f"AQI.{encoded}"


def test_no_identifier_without_an_authority_key_identifier() -> None:
    assert x509.parse_leaf(certificate_with(None, 5)).ari_id == ""


# -- reading a window ---------------------------------------------------------------------------


def body(start: str, end: str, **extra: str) -> bytes:
    import json

    return json.dumps({"suggestedWindow": {"start": start, "end": end}, **extra}).encode()


def test_a_window_with_retry_after_and_explanation() -> None:
    found = ari.parse(
        body(
            "2030-01-02T03:04:05Z",
            "2030-01-04T03:04:05.123456789Z",
            explanationURL="https://ca.example/incident",
        ),
        retry_after=NOW + 3 * HOUR,
        now=NOW,
    )
    assert (found.start, found.end.replace(microsecond=0)) == (START, START + 48 * HOUR)
    assert found.recheck_at == NOW + 3 * HOUR
    assert found.explanation_url == "https://ca.example/incident"


def test_recheck_without_retry_after_and_with_a_tiny_one() -> None:
    assert ari.recheck_time(None, NOW) == NOW + ari.DEFAULT_RECHECK
    assert ari.recheck_time(NOW, NOW) == NOW + ari.MIN_RECHECK


def test_an_explanation_that_is_no_web_address_is_not_kept() -> None:
    found = ari.parse(
        body("2030-01-02T03:04:05Z", "2030-01-03T00:00:00Z", explanationURL="javascript:x"),
        retry_after=None,
        now=NOW,
    )
    assert found.explanation_url == ""


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (body("2030-01-02T03:04:05Z", "2030-01-02T02:04:05Z"), "ends .* before it starts"),
        (body("2030-01-02T03:04:05Z", "2030-01-02T03:04:05Z"), "ends .* before it starts"),
        (body("soon", "2030-01-02T03:04:05Z"), "'soon' is not an RFC 3339 time"),
        (body("2030-01-02T03:04:05", "2030-01-03T03:04:05"), "has no zone"),
        (b'{"suggestedWindow": "soon"}', "no suggestedWindow"),
        (b"<html>", "not JSON"),
        (b'{"suggestedWindow": {"start": 5}}', "no readable start time"),
    ],
)
def test_unusable_windows_are_refused(answer: bytes, says: str) -> None:
    with pytest.raises(RenewalInfoUnusable, match=says):
        ari.parse(answer, retry_after=None, now=NOW)


# -- through the double in front of Pebble ------------------------------------------------------


@pytest.fixture
def proxy(pebble_server: PebbleServer, tmp_path_factory) -> Iterator[AcmeProxy]:
    with AcmeProxy(
        tmp_path_factory.mktemp("ari-proxy"),
        pebble_server.directory_url,
        pebble_server.ca_bundle,
        renewal_info=True,
    ) as server:
        yield server


def client_for(server: AcmeProxy, tmp_path: Path) -> acme.AcmeClient:
    return acme.AcmeClient(
        server.directory_url,
        storage_root=tmp_path,
        email="ari@example.com",
        ca_bundle=str(server.ca_bundle),
    )


def test_renewal_info_is_asked_and_read(proxy: AcmeProxy, tmp_path: Path) -> None:
    proxy.set_renewal_info(
        "a.b",
        window(
            START, START + 48 * HOUR, retry_after="7200", explanation_url="https://ca.example/x"
        ),
    )
    before = datetime.datetime.now(UTC)
    found = client_for(proxy, tmp_path).renewal_info("a.b")
    assert found is not None
    assert (found.start, found.end) == (START, START + 48 * HOUR)
    assert before + 2 * HOUR <= found.recheck_at <= datetime.datetime.now(UTC) + 2 * HOUR
    assert found.explanation_url == "https://ca.example/x"
    assert proxy.renewal_info_asked() == ["a.b"]


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (window(START, START - HOUR, retry_after="600"), "ends .* before it starts"),
        (RenewalAnswer('{"suggestedWindow": {}}', headers={"Retry-After": "600"}), "no readable"),
        (RenewalAnswer("{}", status=500, headers={"Retry-After": "600"}), "HTTP 500"),
    ],
)
def test_an_unusable_answer_says_so_and_when_to_ask_again(
    proxy: AcmeProxy, tmp_path: Path, answer: RenewalAnswer, says: str
) -> None:
    proxy.set_renewal_info("a.b", answer)
    before = datetime.datetime.now(UTC)
    with pytest.raises(RenewalInfoUnusable, match=says) as caught:
        client_for(proxy, tmp_path).renewal_info("a.b")
    assert "lifetime rule" in caught.value.message
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= before + datetime.timedelta(seconds=600)


def test_a_ca_without_renewal_info_is_not_asked(
    pebble_server: PebbleServer, tmp_path: Path
) -> None:
    client = acme.AcmeClient(
        pebble_server.directory_url,
        storage_root=tmp_path,
        email="ari@example.com",
        ca_bundle=str(pebble_server.ca_bundle),
    )
    assert client.renewal_info("a.b") is None


CSR = x509.make_csr("replaces.example.com", x509.generate_private_key())


def order_with_replaces(proxy: AcmeProxy, tmp_path: Path) -> object:
    client = client_for(proxy, tmp_path)
    client.ensure_account()
    ca = client._connect()
    return client._new_order(ca, CSR, "replaces.example.com", "a.b")


def test_an_order_names_the_certificate_it_replaces(proxy: AcmeProxy, tmp_path: Path) -> None:
    order = order_with_replaces(proxy, tmp_path)
    assert order.body.identifiers[0].value == "replaces.example.com"  # type: ignore[attr-defined]
    assert [o.get("replaces") for o in proxy.orders()] == ["a.b"]


@pytest.mark.parametrize(
    "refusal",
    [already_replaced(), Problem(400, MALFORMED, "unknown field replaces")],
    ids=["alreadyReplaced", "malformed"],
)
def test_a_refused_replaces_is_ordered_again_without_it(
    proxy: AcmeProxy, tmp_path: Path, refusal: Problem
) -> None:
    proxy.refuse("newOrder", refusal, times=1)
    order_with_replaces(proxy, tmp_path)
    assert [o.get("replaces") for o in proxy.orders()] == ["a.b", None]
    assert proxy.count("newOrder", refused=True) == 1


def test_other_refusals_are_not_retried(proxy: AcmeProxy, tmp_path: Path) -> None:
    proxy.refuse("newOrder", rate_limited("too many new orders", "60"), times=1)
    with pytest.raises(messages.Error, match="rateLimited"):  # obtain_certificate maps it
        order_with_replaces(proxy, tmp_path)
    assert [o.get("replaces") for o in proxy.orders()] == ["a.b"]

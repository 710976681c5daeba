"""ACME problem documents become operator-facing errors with the right retry policy."""

from __future__ import annotations

import datetime
import socket
import threading

import pytest
import requests
from acme import messages

from modoboa_pro.testing import free_port
from modoboa_pro.virtualhosts.adapters import acme
from modoboa_pro.virtualhosts.errors import (
    AcmeAccountError,
    AcmeError,
    AcmeRateLimited,
    AcmeUnauthorized,
    AcmeValidationFailed,
    ConfigurationError,
)

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 24, 6, 0, tzinfo=UTC)


def problem(code: str, detail: str) -> messages.Error:
    return messages.Error.with_code(code, detail=detail)


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (
            "too many certificates (5) already issued for this exact set of identifiers in the "
            "last 168h0m0s, retry after 2026-11-25 08:30:00 UTC: see https://letsencrypt.org/",
            datetime.datetime(2026, 11, 25, 8, 30, tzinfo=datetime.UTC),
        ),
        (
            "too many new orders: retry after 2026-11-24T07:15:00Z",
            datetime.datetime(2026, 11, 24, 7, 15, tzinfo=datetime.UTC),
        ),
        ("rate limited, no time given", NOW + acme.DEFAULT_RATE_LIMIT_WAIT),
        ("", NOW + acme.DEFAULT_RATE_LIMIT_WAIT),
    ],
)
def test_rate_limit_reset_is_read_from_the_detail(detail: str, expected) -> None:
    assert acme.parse_rate_limit_retry_after(detail, NOW) == expected


def test_rate_limited_carries_its_reset_time() -> None:
    err = acme._map_problem(
        problem("rateLimited", "too many orders, retry after 2026-11-25 08:30:00 UTC"),
        "ordering a certificate for www.example.com",
    )
    assert isinstance(err, AcmeRateLimited) and err.retryable
    assert err.retry_after == datetime.datetime(2026, 11, 25, 8, 30, tzinfo=datetime.UTC)
    assert "Nothing will be retried before 2026-11-25 08:30:00 UTC" in err.message


def test_a_reset_time_in_another_zone_is_shown_in_utc() -> None:
    err = acme._map_problem(
        problem("rateLimited", "too many orders, retry after 2026-11-25 10:30:00 +02:00"),
        "ordering a certificate for www.example.com",
    )
    assert err.retry_after == datetime.datetime(2026, 11, 25, 8, 30, tzinfo=datetime.UTC)
    assert "Nothing will be retried before 2026-11-25 08:30:00 UTC" in err.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", NOW + datetime.timedelta(seconds=120)),
        (" 0 ", NOW),
        ("Wed, 25 Nov 2026 08:30:00 GMT", datetime.datetime(2026, 11, 25, 8, 30, tzinfo=UTC)),
        ("Wed, 25 Nov 2026 10:30:00 +0200", datetime.datetime(2026, 11, 25, 8, 30, tzinfo=UTC)),
        ("Wed, 25 Nov 2026 08:30:00 -0000", datetime.datetime(2026, 11, 25, 8, 30, tzinfo=UTC)),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("9" * 30, None),  # beyond any date: ignored, not a crash
    ],
)
def test_retry_after_header_forms(header, expected) -> None:
    assert acme.parse_retry_after_header(header, NOW) == expected


def test_the_retry_after_header_wins_over_the_detail() -> None:
    detail = "too many orders, retry after 2026-11-25 08:30:00 UTC"
    minute = datetime.timedelta(seconds=60)
    assert acme.parse_rate_limit_retry_after(detail, NOW, header="60") == NOW + minute
    # An unreadable header falls back to the detail, then to the default wait.
    later = datetime.datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
    assert acme.parse_rate_limit_retry_after(detail, NOW, header="soon") == later
    assert acme.parse_rate_limit_retry_after("slow down", NOW, header="soon") == (
        NOW + acme.DEFAULT_RATE_LIMIT_WAIT
    )


def test_rate_limited_takes_its_time_from_the_header() -> None:
    err = acme._map_problem(
        problem("rateLimited", "too many new orders, retry after 2026-11-25 08:30:00 UTC"),
        "ordering a certificate for www.example.com",
        "Wed, 25 Nov 2026 09:15:30 GMT",
    )
    assert err.retry_after == datetime.datetime(2026, 11, 25, 9, 15, 30, tzinfo=UTC)
    assert "Nothing will be retried before 2026-11-25 09:15:30 UTC" in err.message


def test_a_refused_connection_is_named_in_a_few_words() -> None:
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"https://127.0.0.1:{free_port()}/dir", timeout=5)
    assert acme._network_reason(caught.value) == "connection refused"


@pytest.mark.parametrize(
    ("code", "cls", "retryable", "hint"),
    [
        ("invalidContact", AcmeAccountError, False, "Fix the ACME account email"),
        ("unsupportedContact", AcmeAccountError, False, "Fix the ACME account email"),
        ("unauthorized", AcmeUnauthorized, True, "Check ACME_DIRECTORY_URL"),
        ("rejectedIdentifier", AcmeUnauthorized, False, "Check ACME_DIRECTORY_URL"),
        ("dns", AcmeValidationFailed, True, "public DNS"),
        ("connection", AcmeValidationFailed, True, "port 80"),
        ("serverInternal", AcmeError, True, "answered an error"),
    ],
)
def test_problem_types_map_to_operator_errors(code, cls, retryable, hint) -> None:
    err = acme._map_problem(problem(code, "the CA's own words"), "doing something")
    assert type(err) is cls
    assert err.retryable is retryable
    assert hint in err.message and "the CA's own words" in err.message


def test_account_dir_is_one_per_directory_url(tmp_path) -> None:
    prod = acme.account_dir(tmp_path, "https://acme-v02.api.letsencrypt.org/directory")
    staging = acme.account_dir(tmp_path, "https://acme-staging-v02.api.letsencrypt.org/directory")
    assert prod != staging and prod.parent == staging.parent == tmp_path / "accounts"
    assert prod.name.startswith("acme-v02.api.letsencrypt.org-")


def test_no_email_is_a_configuration_error(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="No ACME account email"):
        acme.AcmeClient("https://ca.example/dir", storage_root=tmp_path, email="")


@pytest.mark.parametrize(
    "scheme",
    [
        # Mid-TLS: the client's hello read (so that closing sends a FIN, not a reset), then
        # closed without a word of TLS.
        "https",
        # Before the answer: the request read, then closed; urllib3 2.x reports it as a
        # ConnectionResetError without an errno, "Remote end closed connection without
        # response".
        "http",
    ],
)
def test_a_connection_dropped_by_a_killed_ca_is_named_in_a_few_words(scheme: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:

        def drop() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.close()

        thread = threading.Thread(target=drop)
        thread.start()
        with pytest.raises(requests.ConnectionError) as caught:
            requests.get(f"{scheme}://127.0.0.1:{server.getsockname()[1]}/dir", timeout=5)
        thread.join()
    assert acme._network_reason(caught.value) == "the connection was closed without an answer"


def test_a_reset_connection_keeps_its_own_words() -> None:
    err = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
    assert acme._network_reason(err) == "connection reset by peer"

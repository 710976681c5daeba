"""ACME client adapter: one account per directory URL, HTTP-01 orders, mapped errors.

Wraps the ``acme`` library. Plain values in (URLs, paths, PEM bytes), plain
values out; every failure leaves as an ``AcmeError`` subclass whose message
names the likely cause, as the troubleshooting table of docs/tls-certificates.md.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import http.client
import json
import logging
import re
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import josepy as jose
import requests
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509 as crypto_x509
from cryptography.hazmat.primitives.asymmetric import ec

from .. import constants
from ..errors import (
    AcmeAccountError,
    AcmeDirectoryUnreachable,
    AcmeError,
    AcmeOrderFailed,
    AcmePaused,
    AcmeProfileRefused,
    AcmeRateLimited,
    AcmeUnauthorized,
    AcmeValidationFailed,
    ConfigurationError,
    RenewalInfoUnusable,
)
from . import ari, files

logger = logging.getLogger("modoboa.jobs")

USER_AGENT = "modoboa-pro-acme"
# Polling: start fast (a CA next door validates and issues in milliseconds), double up
# to a polite interval (3 s after about 5 s of polling, 10 looks); a Retry-After the CA
# sends wins.
POLL_FIRST_INTERVAL = 0.005
POLL_MAX_INTERVAL = 3.0
POLL_GROWTH = 2.0
# When a CA rate-limits us without saying until when (no Retry-After header, no time
# in its detail), wait this long.
DEFAULT_RATE_LIMIT_WAIT = datetime.timedelta(hours=1)
NETWORK_TIMEOUT = 30
# Signed requests retried on badNonce (each library call already retries once).
BAD_NONCE_ATTEMPTS = 8
# A renewalInfo answer is asked by the daily scan, host after host: a CA that does not
# answer quickly must not hold the scan for NETWORK_TIMEOUT per host.
RENEWAL_INFO_TIMEOUT = 10
# Answers to an order carrying ``replaces`` after which it is sent again without it
# (RFC 9773 5: the certificate was already replaced, or an older CA does not know the field).
REPLACES_REFUSED = frozenset({"alreadyReplaced", "malformed"})

T = TypeVar("T")

_RETRY_AFTER_RE = re.compile(
    r"retry after (\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:\.\d+)?\s*(UTC|Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)


class ChallengePublisher(Protocol):
    """Where HTTP-01 key authorizations are served from (the webroot)."""

    def publish(self, token: str, content: str) -> None: ...

    def remove(self, token: str) -> None: ...


@dataclass(frozen=True)
class Account:
    """An ACME account known to the CA."""

    uri: str
    email: str
    directory_url: str


@dataclass(frozen=True)
class ProfileChoice:
    """The ACME profile to ask for; ``required``: never fall back to the CA's default
    (a host's own choice), else only preferred (the instance's ACME_PROFILE)."""

    name: str
    required: bool


def account_dir(storage_root: Path, directory_url: str) -> Path:
    """Directory of the account for ``directory_url`` (one account per CA endpoint)."""
    parsed = urllib.parse.urlsplit(directory_url)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parsed.netloc) or "ca"
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
    return storage_root / constants.ACCOUNTS_DIRNAME / f"{host}-{digest}"


def parse_retry_after_header(value: str | None, now: datetime.datetime) -> datetime.datetime | None:
    """The time an HTTP ``Retry-After`` names (delta-seconds or an HTTP-date, RFC 9110
    10.2.3), in UTC; None when there is none or it cannot be read."""
    value = (value or "").strip()
    try:
        if re.fullmatch(r"[0-9]+", value):
            return now + datetime.timedelta(seconds=int(value))
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": a UTC time (RFC 5322 3.3)
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


def parse_rate_limit_retry_after(
    detail: str, now: datetime.datetime, *, header: str | None = None
) -> datetime.datetime:
    """When a rate-limited request may be sent again, in UTC.

    The answer's ``Retry-After`` header wins; then a "retry after <time>" in the CA's
    detail (Let's Encrypt writes one); else ``DEFAULT_RATE_LIMIT_WAIT`` from now.
    """
    from_header = parse_retry_after_header(header, now)
    if from_header is not None:
        return from_header
    match = _RETRY_AFTER_RE.search(detail or "")
    if match:
        stamp = match.group(1).replace(" ", "T")
        zone = match.group(2) or "UTC"
        if zone.upper() in ("UTC", "Z"):
            zone = "+00:00"
        try:
            return datetime.datetime.fromisoformat(stamp + zone).astimezone(datetime.UTC)
        except ValueError:
            pass
    return now + DEFAULT_RATE_LIMIT_WAIT


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class AcmeRequest:
    """One HTTP request to the CA, for the metrics: ``action`` is the directory's name of
    the URL (``newOrder``, ``newNonce``...; ``directory``; ``other`` for orders,
    authorizations, challenges and certificates), ``status`` the HTTP code or ``error``."""

    host: str
    method: str
    action: str
    status: str
    seconds: float


# Told of every request to the CA (``counters.count_acme_request`` in production).
RequestObserver = Callable[[AcmeRequest], None]
ACTION_DIRECTORY = "directory"
ACTION_OTHER = "other"
ACTION_RENEWAL_INFO = "renewalInfo"
STATUS_ERROR = "error"  # no answer: connection refused, timeout, TLS


class RetryAfterNetwork(client.ClientNetwork):
    """The library's network object, keeping the ``Retry-After`` of the last answer.

    The library turns an error answer into ``messages.Error`` and drops its headers;
    a rate limit's ``Retry-After`` is the one time a CA commits to. Each request is also
    told to ``observer`` (method, directory name of the URL, status, duration).
    """

    last_retry_after: str | None = None
    observer: RequestObserver | None = None
    actions: dict[str, str] = {}  # URL -> directory name; replaced per instance, never mutated

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.last_retry_after = None  # a request that fails leaves none behind
        started = time.monotonic()
        status = STATUS_ERROR
        try:
            response = super()._send_request(method, url, *args, **kwargs)
            status = str(response.status_code)
        finally:  # a request without an answer counts too, as ``error``
            action = self.actions.get(url, ACTION_OTHER)
            observe(self.observer, method, url, action, status, started)
        self.last_retry_after = response.headers.get("Retry-After")
        return response


def observe(
    observer: RequestObserver | None,
    method: str,
    url: str,
    action: str,
    status: str,
    started: float,
) -> None:
    """Tell ``observer`` of one request; a failing observer never fails the request."""
    if observer is None:
        return
    try:
        host = urllib.parse.urlsplit(url).netloc
        observer(AcmeRequest(host, method, action, status, time.monotonic() - started))
    except Exception:  # metrics are best effort
        logger.debug("ACME request not observed", exc_info=True)


class _NewOrder(messages.NewOrder):
    """A newOrder naming the certificate it replaces (RFC 9773 5), which acme 5.x lacks."""

    replaces: str | None = jose.field("replaces", omitempty=True)


# The problem a CA answers for a request signed by an account it does not know (RFC 8555 6.7).
ACCOUNT_UNKNOWN = "accountDoesNotExist"


def _read_key(key_path: Path) -> jose.JWK:
    try:
        return jose.JWK.json_loads(key_path.read_text())
    except (ValueError, jose.errors.DeserializationError) as err:
        raise AcmeAccountError(
            f"The ACME account key {key_path} is unreadable; move it aside to "
            "register a new account.",
        ) from err


def _problem_type(err: messages.Error) -> str:
    """The last part of a problem type (``alreadyReplaced``), known to the library or not."""
    return str(err.typ).rsplit(":", 1)[-1]


class AcmeClient:
    """An ACME v2 client bound to one directory URL and one account key."""

    def __init__(
        self,
        directory_url: str,
        *,
        storage_root: Path,
        email: str,
        ca_bundle: str | None = None,
        order_timeout: float = 90.0,
        sleep: Callable[[float], None] = time.sleep,
        observer: RequestObserver | None = None,
    ) -> None:
        if not email:
            raise ConfigurationError(
                "No ACME account email is set: enter one in Settings > Virtual hosts "
                "(the certificate authority requires a contact address)."
            )
        self.directory_url = directory_url
        self.storage_root = storage_root
        self.email = email
        self.ca_bundle = ca_bundle
        self.order_timeout = order_timeout
        self._sleep = sleep
        self.observer = observer
        self._client: client.ClientV2 | None = None
        self._net: RetryAfterNetwork | None = None
        self._key: jose.JWK | None = None
        self._remembered = False  # the account in use was remembered, not asked for

    # -- account -----------------------------------------------------------

    def _load_or_create_key(self) -> jose.JWK:
        directory = account_dir(self.storage_root, self.directory_url)
        key_path = directory / "private_key.json"
        if key_path.exists():
            return _read_key(key_path)
        # accounts/ and each account directory: only the Modoboa user may look inside.
        files.ensure_dir(directory.parent, constants.PRIVATE_DIR_MODE)
        files.ensure_dir(directory, constants.PRIVATE_DIR_MODE)
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        if files.create_exclusive(key_path, key.json_dumps().encode(), constants.PRIVATE_FILE_MODE):
            return key
        # The first runs of a burst create it at the same moment: one key (and one account)
        # for all of them, whichever was first.
        return _read_key(key_path)

    def _key_thumbprint(self) -> str:
        assert self._key is not None
        return jose.b64encode(self._key.thumbprint()).decode()

    def _connect(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        self._key = self._load_or_create_key()
        alg = jose.ES256 if isinstance(self._key, jose.JWKEC) else jose.RS256
        net = RetryAfterNetwork(
            self._key,
            alg=alg,
            user_agent=USER_AGENT,
            verify_ssl=self.ca_bundle or True,  # type: ignore[arg-type]
            timeout=NETWORK_TIMEOUT,
        )
        net.observer = self.observer
        net.actions = {self.directory_url: ACTION_DIRECTORY}
        try:
            directory = client.ClientV2.get_directory(self.directory_url, net)
        except messages.Error as err:  # a problem document, e.g. rateLimited
            raise _map_problem(
                err, f"fetching the ACME directory {self.directory_url}", net.last_retry_after
            ) from err
        except (requests.exceptions.RequestException, acme_errors.Error, ValueError) as err:
            raise AcmeDirectoryUnreachable(
                f"The ACME directory {self.directory_url} could not be fetched "
                f"({_network_reason(err)}); it will be retried with back-off. If this lasts, "
                "check ACME_DIRECTORY_URL (and ACME_CA_BUNDLE for a private CA) and that this "
                "server can reach it over HTTPS.",
                detail=str(err),
            ) from err
        net.actions = {
            url: name for name, url in directory.to_partial_json().items() if isinstance(url, str)
        } | net.actions
        self._net = net
        self._client = client.ClientV2(directory, net)
        return self._client

    def _retry_after(self) -> str | None:
        """The ``Retry-After`` of the CA's last answer."""
        return self._net.last_retry_after if self._net is not None else None

    def ensure_account(self) -> Account:
        """The account of this key and email: the one registered before, as this storage
        remembers it (``account.json``, no request to the CA), or registered now.

        A CA that no longer knows the remembered account (a test CA restarted) says so on
        the next order, which registers again (``obtain_certificate``): sending newAccount
        with a known key returns the existing account, or creates it.
        """
        acme = self._connect()
        if (uri := self._remembered_uri()) is not None:
            acme.net.account = messages.RegistrationResource(uri=uri, body=self._registration())
            self._remembered = True
            return Account(uri=uri, email=self.email, directory_url=self.directory_url)
        return self._register(acme)

    def _registration(self) -> messages.NewRegistration:
        return messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)

    def _remembered_uri(self) -> str | None:
        """The account URL saved for this key (a new key has none), directory and email;
        None to register."""
        path = account_dir(self.storage_root, self.directory_url) / "account.json"
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None  # absent or damaged: registering again rewrites it
        wanted = (self.email, self.directory_url, self._key_thumbprint())
        if not isinstance(meta, dict) or (
            meta.get("email"),
            meta.get("directory_url"),
            meta.get("key_thumbprint"),  # the URL is this key's account, not another's
        ) != wanted:
            return None
        uri = meta.get("uri")
        return uri if isinstance(uri, str) and uri.startswith("https://") else None

    def _register(self, acme: client.ClientV2) -> Account:
        """newAccount with this key: the existing account, or a new one."""
        self._remembered = False
        registration = self._registration()
        acme.net.account = None  # newAccount is signed with the key itself, not an account URL
        try:
            regr = _signed(acme.new_account, registration)
            uri = regr.uri
        except acme_errors.ConflictError as err:
            # The key is already registered: the error carries the account URL.
            uri = err.location
            acme.net.account = messages.RegistrationResource(uri=uri, body=registration)
        except messages.Error as err:
            raise _map_problem(
                err, f"registering the ACME account {self.email}", self._retry_after()
            ) from err
        except requests.exceptions.RequestException as err:
            raise AcmeDirectoryUnreachable(
                f"The CA at {self.directory_url} did not answer while registering the ACME "
                f"account ({_network_reason(err)}); it will be retried with back-off.",
                detail=str(err),
            ) from err
        self._save_account_meta(uri)
        return Account(uri=uri, email=self.email, directory_url=self.directory_url)

    def _save_account_meta(self, uri: str) -> None:
        meta = {
            "uri": uri,
            "email": self.email,
            "directory_url": self.directory_url,
            "key_thumbprint": self._key_thumbprint(),
        }
        path = account_dir(self.storage_root, self.directory_url) / "account.json"
        content = json.dumps(meta, indent=2).encode()
        try:
            same_mode = stat.S_IMODE(path.stat().st_mode) == constants.PRIVATE_FILE_MODE
            if same_mode and path.read_bytes() == content:
                return  # as every run finds it: no write (and fsync) on the way to a certificate
        except OSError:
            pass  # absent or unreadable: written below
        files.atomic_write(path, content, constants.PRIVATE_FILE_MODE)

    # -- orders ------------------------------------------------------------

    def renewal_info(self, cert_id: str) -> ari.RenewalWindow | None:
        """The CA's suggested renewal window for the certificate ``cert_id`` (RFC 9773), or
        None when the CA's directory has no ``renewalInfo``.

        ``RenewalInfoUnusable`` when the answer cannot be had or used: the caller falls back
        to the lifetime rule. An unauthenticated GET (RFC 9773 4.1).
        """
        acme = self._connect()
        base = acme.directory.to_partial_json().get("renewalInfo")
        if not isinstance(base, str) or not base or not cert_id:
            return None
        url = base.rstrip("/") + "/" + cert_id
        started, status = time.monotonic(), STATUS_ERROR
        try:
            response = requests.get(
                url,
                headers={"User-Agent": USER_AGENT},
                verify=self.ca_bundle or True,
                timeout=RENEWAL_INFO_TIMEOUT,
            )
            status = str(response.status_code)
        except requests.exceptions.RequestException as err:
            raise AcmeDirectoryUnreachable(
                f"The CA's renewal information at {url} could not be fetched "
                f"({_network_reason(err)}); the lifetime rule decides until it answers.",
                detail=str(err),
            ) from err
        finally:
            observe(self.observer, "GET", url, ACTION_RENEWAL_INFO, status, started)
        now = _utcnow()
        retry_after = parse_retry_after_header(response.headers.get("Retry-After"), now)
        if response.status_code != 200:
            raise RenewalInfoUnusable(
                f"The CA answered HTTP {response.status_code} for the renewal information "
                f"of certificate {cert_id}; the lifetime rule decides until it answers.",
                detail=response.text[:500],
                retry_after=ari.recheck_time(retry_after, now),
            )
        try:
            return ari.parse(response.content, retry_after=retry_after, now=now)
        except RenewalInfoUnusable as err:
            raise RenewalInfoUnusable(
                f"Unusable renewal information for certificate {cert_id}: {err.message}; "
                "the lifetime rule decides instead.",
                detail=response.text[:500],
                retry_after=ari.recheck_time(retry_after, now),
            ) from err

    def obtain_certificate(
        self,
        hostname: str,
        csr_pem: bytes,
        publisher: ChallengePublisher,
        *,
        replaces: str = "",
        profile: ProfileChoice | None = None,
    ) -> bytes:
        """Run one HTTP-01 order for ``hostname``; return the full chain PEM.

        ``replaces``: the RFC 9773 identifier of the certificate this one renews (sent when
        the CA offers ARI; renewals inside the CA's window are exempt from its rate limits).
        ``profile``: the ACME profile to ask for (``new_order_with_profile``).
        """
        acme = self._connect()
        if acme.net.account is None:
            self.ensure_account()
        assert self._key is not None
        deadline = time.monotonic() + self.order_timeout
        if "renewalInfo" not in acme.directory.to_partial_json():
            replaces = ""  # RFC 9773 5: only to a CA that implements it
        if profile is not None:
            check_profile(profile.name, _offered_profiles(acme), self.directory_url)
        try:
            order = self._place_order(acme, csr_pem, hostname, replaces, profile)
            published: list[str] = []
            try:
                for authzr in order.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue  # reused authorization: nothing to prove
                    challb = _http01(authzr, hostname)
                    response, validation = challb.response_and_validation(self._key)
                    token = challb.chall.encode("token")
                    publisher.publish(token, validation)
                    published.append(token)
                    _signed(acme.answer_challenge, challb, response)
                for authzr in order.authorizations:
                    self._wait_authorization(acme, authzr, hostname, deadline)
            finally:
                for token in published:
                    publisher.remove(token)
            return self._finalize(acme, order, hostname, deadline)
        except AcmeError:
            raise
        except messages.Error as err:
            raise _map_problem(
                err, f"ordering a certificate for {hostname}", self._retry_after()
            ) from err
        except acme_errors.Error as err:
            raise AcmeOrderFailed(
                f"The order for {hostname} failed: {_short(err)}.", detail=str(err)
            ) from err
        except requests.exceptions.RequestException as err:
            raise AcmeDirectoryUnreachable(
                f"The CA at {self.directory_url} stopped answering during the order for "
                f"{hostname} ({_network_reason(err)}); it will be retried with back-off.",
                detail=str(err),
            ) from err

    def _place_order(
        self,
        acme: client.ClientV2,
        csr_pem: bytes,
        hostname: str,
        replaces: str,
        profile: ProfileChoice | None,
    ) -> messages.OrderResource:
        def place() -> messages.OrderResource:
            return new_order_with_profile(
                lambda name: self._new_order(acme, csr_pem, hostname, replaces, name),
                hostname,
                profile,
            )

        try:
            return place()
        except messages.Error as err:
            if not self._remembered or _problem_type(err) != ACCOUNT_UNKNOWN:
                raise
        # The CA forgot the remembered account (its records reset): register, once.
        logger.info(
            "The CA at %s no longer knows the ACME account %s; registering it again",
            self.directory_url,
            acme.net.account.uri if acme.net.account is not None else "",
        )
        self._register(acme)
        return place()

    def _new_order(
        self,
        acme: client.ClientV2,
        csr_pem: bytes,
        hostname: str,
        replaces: str,
        profile: str | None = None,
    ) -> messages.OrderResource:
        """``acme.new_order`` (with ``profile``), carrying ``replaces`` when given; sent once
        more without it when the CA refuses it (already replaced, or an older CA's
        ``malformed``)."""
        if not replaces:
            return _signed(acme.new_order, csr_pem, profile)
        try:
            return _signed(self._post_new_order, acme, csr_pem, replaces, profile)
        except acme_errors.ConflictError:
            # The library raises this for every 409 and drops the body: on newOrder, 409 is
            # alreadyReplaced (RFC 9773 7.4).
            why = "alreadyReplaced"
        except messages.Error as err:
            if _problem_type(err) not in REPLACES_REFUSED:
                raise
            why = f"{_problem_type(err)}: {err.detail}" if err.detail else _problem_type(err)
        logger.warning(
            "virtualhost %s: the CA refused the order replacing certificate %s (%s); "
            "ordering again without 'replaces'",
            hostname,
            replaces,
            why,
        )
        return _signed(acme.new_order, csr_pem, profile)

    @staticmethod
    def _post_new_order(
        acme: client.ClientV2, csr_pem: bytes, replaces: str, profile: str | None = None
    ) -> messages.OrderResource:
        """What ``ClientV2.new_order`` sends, plus ``replaces``, through its signed post."""
        csr = crypto_x509.load_pem_x509_csr(csr_pem)
        dns_names, ips = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in dns_names
        ] + [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip)) for ip in ips]
        order = _NewOrder(identifiers=identifiers, replaces=replaces, profile=profile)
        response = acme._post(acme.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authorizations = [
            acme._authzr_from_response(acme._post_as_get(url), uri=url)
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body,
            uri=response.headers.get("Location"),
            authorizations=authorizations,
            csr_pem=csr_pem,
        )

    def _wait_authorization(
        self,
        acme: client.ClientV2,
        authzr: messages.AuthorizationResource,
        hostname: str,
        deadline: float,
    ) -> None:
        interval = POLL_FIRST_INTERVAL
        while True:
            # _post_as_get is the library's POST-as-GET; poll() would not let us
            # honour a short first interval.
            response = _signed(acme._post_as_get, authzr.uri)
            body = messages.Authorization.from_json(response.json())
            if body.status == messages.STATUS_VALID:
                return
            if body.status != messages.STATUS_PENDING:
                raise _validation_failure(hostname, body)
            interval = self._pause(response, interval, deadline, hostname, "validation")

    def _finalize(
        self,
        acme: client.ClientV2,
        order: messages.OrderResource,
        hostname: str,
        deadline: float,
    ) -> bytes:
        order = _signed(acme.begin_finalization, order)
        interval = POLL_FIRST_INTERVAL
        while True:
            body = order.body
            if body.status == messages.STATUS_VALID and body.certificate:
                pem = _signed(acme._post_as_get, body.certificate).text
                return pem.encode()
            if body.status == messages.STATUS_INVALID:
                detail = body.error.detail if body.error is not None else "no detail given"
                raise AcmeOrderFailed(
                    f"The CA refused to issue the certificate for {hostname}: {detail}.",
                    detail=str(body.error),
                )
            response = _signed(acme._post_as_get, order.uri)
            interval = self._pause(response, interval, deadline, hostname, "issuance")
            order = order.update(body=messages.Order.from_json(response.json()))

    def _pause(
        self,
        response: requests.Response,
        interval: float,
        deadline: float,
        hostname: str,
        what: str,
    ) -> float:
        wait = interval
        until = parse_retry_after_header(response.headers.get("Retry-After"), _utcnow())
        if until is not None:
            wait = max(wait, (until - _utcnow()).total_seconds())
        if time.monotonic() + wait > deadline:
            raise AcmeOrderFailed(
                f"The CA did not complete {what} for {hostname} within "
                f"{self.order_timeout:.0f} s; it will be retried.",
            )
        self._sleep(wait)
        return min(interval * POLL_GROWTH, POLL_MAX_INTERVAL)


def _offered_profiles(acme: client.ClientV2) -> dict[str, str]:
    """The profiles the directory advertises (``meta.profiles``: name -> description)."""
    meta = acme.directory.meta
    return dict(meta.profiles or {}) if meta is not None else {}


def check_profile(name: str, offered: dict[str, str], directory_url: str) -> None:
    """Refuse a profile the CA does not offer, naming those it does."""
    if name in offered:
        return
    choices = ", ".join(sorted(offered)) or "none: it does not support profiles"
    raise ConfigurationError(
        f"The ACME profile {name!r} is not offered by the CA at {directory_url} (profiles "
        f"offered: {choices}). Change ACME_PROFILE or the host's profile, or leave it empty "
        "for the CA's default."
    )


def _profile_refused(err: messages.Error) -> bool:
    """Whether a CA's problem says the account may not use the profile it asked for."""
    # The library knows only RFC 8555's codes (``err.code`` is None for invalidProfile).
    code = str(err.typ or "").removeprefix(messages.ERROR_PREFIX)
    return code == "invalidProfile" or (
        code == "unauthorized" and "profile" in (err.detail or "").lower()
    )


def new_order_with_profile(
    place: Callable[[str | None], messages.OrderResource],
    hostname: str,
    profile: ProfileChoice | None,
) -> messages.OrderResource:
    """Place a newOrder (``place(profile name)``) asking for ``profile``; a profile only
    preferred and refused for this account is dropped once, and the order placed with the
    CA's default."""
    if profile is None:
        return place(None)
    try:
        return place(profile.name)
    except messages.Error as err:
        if not _profile_refused(err):
            raise
        detail = err.detail or str(err)
        if profile.required:
            raise AcmeProfileRefused(
                f"The CA does not let this account use the ACME profile {profile.name!r} "
                f"for {hostname}: {detail}. Choose another profile for this host (or none, "
                "for the CA's default), then retry.",
                detail=detail,
            ) from err
        logger.warning(
            "ACME profile %r refused for this account (%s); ordering %s with the CA's "
            "default profile",
            profile.name,
            detail,
            hostname,
        )
        return place(None)


def _signed(call: Callable[..., T], *args: object) -> T:
    """Send a signed request, retrying while the CA rejects our nonce.

    RFC 8555 (6.5) tells clients to retry a ``badNonce`` with the fresh nonce the
    error carried; the library retries once, a busy CA may need a few more.
    """
    for attempt in range(1, BAD_NONCE_ATTEMPTS + 1):
        try:
            return call(*args)
        except messages.Error as err:
            if err.code != "badNonce" or attempt == BAD_NONCE_ATTEMPTS:
                raise
            logger.debug("ACME nonce rejected (attempt %d); retrying", attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _http01(authzr: messages.AuthorizationResource, hostname: str) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if isinstance(challb.chall, challenges.HTTP01):
            return challb
    raise AcmeUnauthorized(
        f"The CA offered no HTTP-01 challenge for {hostname}; this CA cannot be used "
        "with HTTP validation.",
        retryable=False,
    )


def _validation_failure(hostname: str, body: messages.Authorization) -> AcmeError:
    details = [
        f"{chall.error.typ.rsplit(':', 1)[-1]}: {chall.error.detail}"
        for chall in body.challenges
        if chall.error is not None
    ]
    ca_says = "; ".join(details) or f"authorization is {body.status}"
    return AcmeValidationFailed(
        f"The certificate authority could not validate {hostname}: {ca_says}. "
        f"Check that {hostname} resolves in public DNS to this server and that port 80 "
        "is reachable from the internet, then retry provisioning.",
        detail=ca_says,
    )


# Let's Encrypt's answer for a paused account+name pair (Boulder's WFE, 2024-2026):
# "Your account is temporarily prevented from requesting certificates for NAME and possibly
# others. Please visit: https://portal.letsencrypt.org/sfe/v1/unpause?jwt=...", typed
# rateLimited or unauthorized. The link is the only way out: waiting does not lift it.
_UNPAUSE_URL = re.compile(r"https://[^\s\"'<>]*/unpause\b[^\s\"'<>]*")


def unpause_url(detail: str) -> str:
    """The CA's self-service unpause link in a problem's detail, or ""."""
    found = _UNPAUSE_URL.search(detail)
    return found.group(0).rstrip(".,;)") if found else ""


def _map_problem(err: messages.Error, doing: str, retry_after: str | None = None) -> AcmeError:
    """The operator's error for a CA's problem document; ``retry_after`` is the answer's
    ``Retry-After`` header, if any."""
    code = err.code or ""
    detail = err.detail or str(err)
    link = unpause_url(detail) if code in ("rateLimited", "unauthorized") else ""
    if link:
        return AcmePaused(
            f"Paused by the certificate authority: it paused this account for this name after "
            f"too many failed validations (while {doing}). Nothing will be retried: first make "
            f"the name point to this server (DNS, port 80), then unpause it at {link} and press "
            "Retry provisioning (or Renew now).",
            unpause_url=link,
            detail=detail,
        )
    if code == "rateLimited":
        when = parse_rate_limit_retry_after(detail, _utcnow(), header=retry_after)
        return AcmeRateLimited(
            f"The certificate authority rate-limited us while {doing}: {detail}. "
            f"Nothing will be retried before {when:%Y-%m-%d %H:%M:%S} UTC.",
            retry_after=when,
            detail=detail,
        )
    if code in ("invalidContact", "unsupportedContact"):
        return AcmeAccountError(
            f"The CA refused the account email while {doing}: {detail}. "
            "Fix the ACME account email in Settings > Virtual hosts.",
            detail=detail,
        )
    if code in ("unauthorized", "accountDoesNotExist", "rejectedIdentifier", "caa"):
        return AcmeUnauthorized(
            f"The CA refused {doing}: {detail}. Check ACME_DIRECTORY_URL, the account "
            "email, and whether a production rate limit was hit.",
            retryable=code != "rejectedIdentifier",
            detail=detail,
        )
    if code in ("dns", "connection", "incorrectResponse", "tls"):
        return AcmeValidationFailed(
            f"The CA could not validate while {doing}: {detail}. Check public DNS and "
            "that port 80 is reachable from the internet.",
            detail=detail,
        )
    return AcmeError(f"The CA answered an error while {doing}: {detail}.", detail=detail)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception it wraps (urllib3 nests them in ``reason`` and ``args``)."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = (getattr(current, "reason", None), current.__cause__, *current.args)
        pending.extend(e for e in nested if isinstance(e, BaseException))


def _network_reason(err: BaseException) -> str:
    """A network failure in a few words ("connection refused"): requests' own text nests
    urllib3's, object addresses included."""
    causes = list(_causes(err))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted: {cause.verify_message}"
    if isinstance(err, requests.exceptions.Timeout):
        return f"no answer within {NETWORK_TIMEOUT} s"
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "its name does not resolve"
        # The CA going away mid-request: before its answer, or mid-TLS (ssl's own words,
        # "EOF occurred in violation of protocol", mean nothing to an operator). urllib3 2.x
        # turns http.client's RemoteDisconnected into a bare ConnectionResetError (no errno),
        # a real reset keeps its errno and its own words.
        if isinstance(cause, http.client.RemoteDisconnected | ssl.SSLEOFError) or (
            isinstance(cause, ConnectionResetError) and cause.errno is None
        ):
            return "the connection was closed without an answer"
        if isinstance(cause, OSError) and cause.strerror:
            text = cause.strerror
            # "Connection refused" reads "connection refused" mid-sentence; "EOF..." stays.
            return text if text[1:2].isupper() else text[:1].lower() + text[1:]
    return _short(err)

"""One exception tree for the app; every message is written for the operator."""

from __future__ import annotations

import datetime
import re

from django.core.exceptions import ImproperlyConfigured


class VirtualHostError(Exception):
    """Root of every error this app raises on purpose.

    ``retryable`` says whether trying again later may succeed without an
    operator changing anything; ``retry_after`` is the earliest sensible time
    (e.g. a CA's rate-limit reset), when known.
    """

    retryable: bool = False
    # The HTTP status the API answers with when this error reaches a request.
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: datetime.datetime | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ConfigurationError(VirtualHostError, ImproperlyConfigured):
    """The instance is misconfigured; an operator must change a setting."""

    http_status = 400


class InvalidHostname(VirtualHostError, ValueError):
    """A hostname that must never reach a file path or an nginx config."""

    http_status = 400


class DuplicateHost(VirtualHostError, ValueError):
    """A virtual host with this (normalised) name already exists."""

    http_status = 400


class RunInProgress(VirtualHostError):
    """A provisioning or renewal run for this host is queued or running."""

    http_status = 409


class DesiredStateChanged(VirtualHostError):
    """The host was disabled or deleted during a run: the run stops where it is.

    Not a failure: the disable or removal job, queued by the change, takes over
    once this run has released the host.
    """

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


class InvalidToken(VirtualHostError, ValueError):
    """An ACME challenge token that must never reach a file path."""


class StorageError(VirtualHostError):
    """Reading or writing files under the ACME storage path failed."""


class UnusablePair(StorageError):
    """The host's pair on disk cannot be served (damaged, mismatched, expired, another name's):
    it was not handed to nginx, and the retry orders a new one."""

    retryable = True


class NginxError(VirtualHostError):
    """Base for nginx failures; ``output`` holds what the command printed."""

    def __init__(self, message: str, *, output: str = "", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.output = output


class NginxConfigTestFailed(NginxError):
    """``nginx -t`` rejected the configuration; the previous one was kept."""


class ForeignConfigBroken(NginxConfigTestFailed):
    """``nginx -t`` fails because of a file that is not this host's site: not ours to undo,
    and retried, since the run succeeds once that file is fixed."""

    retryable = True


class NginxReloadFailed(NginxError):
    """The reload command failed; nginx keeps serving its previous config."""

    retryable = True


class PrivilegedWorkerMissing(NginxReloadFailed):
    """No privileged worker ran the reload. nginx was not touched: it serves what it
    served, and new certificate files are kept for the next reload to serve."""


class ReloadInterrupted(NginxReloadFailed):
    """Redis, through which a reload is asked for and answered, was lost (restarted, down):
    whether nginx reloaded is not known. New certificate files are kept; the retry checks
    what nginx serves and reloads if needed."""


class DeployNotVerified(NginxError):
    """Nginx does not serve the expected certificate after a reload."""

    retryable = True



class MailError(VirtualHostError):
    """Base for the mail services' failures (Postfix, Dovecot); ``output`` holds what the
    command printed. Retried: the web site is already served, only the mail deploy is redone."""

    retryable = True

    def __init__(self, message: str, *, output: str = "", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.output = output


class MailConfigRejected(MailError):
    """``postfix check``, ``postmap -F`` or ``doveconf -n`` refused the new files: the
    previous ones were put back, and the service keeps serving them."""


class MailReloadFailed(MailError):
    """``postfix reload`` or ``doveadm reload`` failed: the service keeps its previous state."""


class MailWorkerMissing(MailReloadFailed):
    """No privileged worker ran the mail deploy: nothing was touched."""


class MailNotVerified(MailError):
    """A mail service does not present the host's certificate after the deploy."""


class UnsupportedDovecot(ConfigurationError):
    """The installed Dovecot is neither 2.3 nor 2.4, whose ``local_name`` syntax we know."""


# A CA's problem detail may quote the challenge URL, token included: shown to operators, it
# says which name failed; the token adds nothing and stays out of logs, alarms and the API.
_CHALLENGE_TOKEN = re.compile(r"(/\.well-known/acme-challenge/)[A-Za-z0-9_-]+")
# The CA's own text is kept to this many characters: enough for its reason, never a document.
CA_DETAIL_MAX = 500


def redact_ca_text(text: str) -> str:
    """The CA's text without challenge tokens, bounded in length."""
    text = _CHALLENGE_TOKEN.sub(r"\1<token>", text)
    return text if len(text) <= CA_DETAIL_MAX else text[: CA_DETAIL_MAX - 1] + "…"


# The CA's unpause link carries a token (a signed JWT) that lets whoever holds it unpause the
# account: shown to operators (the host's error, its alarm), kept out of log files.
_UNPAUSE_TOKEN = re.compile(r"([?&]jwt=)[^\s&]+")


def redact_for_log(text: str) -> str:
    """``text`` without the token of a CA's unpause link (the host's error keeps it)."""
    return _UNPAUSE_TOKEN.sub(r"\1<see the host's last error>", text)


class AcmeError(VirtualHostError):
    """Base for failures talking to the certificate authority.

    The message and the raw detail are cleaned of challenge tokens (``redact_ca_text``).
    """

    retryable = True

    def __init__(self, message: str, **kwargs) -> None:
        if kwargs.get("detail"):
            kwargs["detail"] = redact_ca_text(kwargs["detail"])
        super().__init__(_CHALLENGE_TOKEN.sub(r"\1<token>", message), **kwargs)


class AcmeDirectoryUnreachable(AcmeError):
    """The ACME directory URL could not be fetched."""


class AcmeAccountError(AcmeError):
    """The CA refused the account (e.g. a bad contact email)."""

    retryable = False


class AcmeUnauthorized(AcmeError):
    """The CA refused the order or authorization."""


class AcmeValidationFailed(AcmeError):
    """The CA could not validate the HTTP-01 challenge (DNS, port 80...)."""


class AcmeRateLimited(AcmeError):
    """The CA rate-limited us; ``retry_after`` says when to try again."""


class AcmePaused(AcmeError):
    """The CA paused this account for the name after too many failed validations: nothing is
    retried (waiting does not lift it) until an operator unpauses it at ``unpause_url``."""

    retryable = False

    def __init__(self, message: str, *, unpause_url: str = "", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.unpause_url = unpause_url


class AcmeOrderFailed(AcmeError):
    """The order failed at finalization or timed out."""


class RenewalInfoUnusable(AcmeError):
    """The CA's renewal information (ARI) could not be fetched or read: the lifetime rule
    decides for this certificate until the next ask."""


class AcmeProfileRefused(AcmeError):
    """The CA does not let this account use the ACME profile asked for: an operator chooses
    another one (or none)."""

    retryable = False


class OrderBudgetExhausted(VirtualHostError):
    """The order would exceed one of the CA's limits (``budget``): it was not sent, and is
    retried at ``retry_after``, when the budget allows it."""

    retryable = True


class PreflightFailed(VirtualHostError):
    """The pre-flight check before an order failed: the CA would fail to validate too, so
    nothing was asked of it. Retried with back-off: DNS or a firewall may be fixed meanwhile."""

    retryable = True


class PreflightDnsFailed(PreflightFailed):
    """The name does not resolve (NXDOMAIN, no address, resolver unreachable)."""


class PreflightPortUnreachable(PreflightFailed):
    """An address the name resolves to refuses, or does not answer, HTTP on port 80."""


class PreflightWrongServer(PreflightFailed):
    """An address the name resolves to answers HTTP, but not with our canary token."""


class LockHeld(VirtualHostError):
    """Another worker holds the lock for this host; the work is in progress."""

    retryable = True


class QueueUnavailable(VirtualHostError):
    """Redis, where the workers take their jobs, cannot be reached: nothing was changed."""

    retryable = True
    http_status = 503


class LockUnavailable(VirtualHostError):
    """Redis could not be reached to take or release a host lock."""

    retryable = True
    http_status = 503


class TlsaLookupFailed(VirtualHostError):
    """The DNS server did not say which TLSA records a name has. Never fails a run: the
    current key is kept, and the next run asks again."""

    retryable = True

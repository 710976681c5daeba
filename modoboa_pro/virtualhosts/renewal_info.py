"""Ask the CA when to renew (ARI, RFC 9773) and store its answer on the host.

Asked after each issuance (by the run) and by the daily scan once the host's re-ask time
has passed; never more than once per host per scan. Every failure here is only logged and
stored as "no ARI time": the lifetime rule then decides, and nothing else is held up.
"""

from __future__ import annotations

import datetime
import logging
from typing import Protocol

from . import recording
from .adapters import ari
from .adapters.x509 import CertificateFacts
from .errors import AcmeDirectoryUnreachable, AcmeError
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")


class RenewalInfoSource(Protocol):
    def renewal_info(self, cert_id: str) -> ari.RenewalWindow | None: ...


def needs_asking(host: VirtualHost, facts: CertificateFacts, now: datetime.datetime) -> bool:
    """True when the CA is to be asked about this certificate: never asked about it, or
    its re-ask time (the CA's Retry-After) has passed. No I/O: the scan calls it per host."""
    return asking_due(facts.ari_id, host.ari_cert_id, host.ari_recheck_at, now)


def asking_due(
    ari_id: str,
    asked_about: str,
    recheck_at: datetime.datetime | None,
    now: datetime.datetime,
) -> bool:
    """``needs_asking`` from plain values: the certificate's ARI id, the id the stored
    answer is about, and its re-ask time."""
    if not ari_id:
        return False
    if asked_about != ari_id:
        return True
    return recheck_at is None or recheck_at <= now


def ask(
    host: VirtualHost,
    ca: RenewalInfoSource,
    facts: CertificateFacts,
    *,
    now: datetime.datetime,
    threshold_days: int,
) -> str | None:
    """Ask ``ca`` about ``facts`` and store the answer; return the ARI renewal time in words
    (None when the CA has no ARI or its answer is unusable).

    ``AcmeDirectoryUnreachable`` when the CA cannot be reached: nothing is stored, and the
    caller stops asking (the scan) or goes on without (a run).
    """
    try:
        window = ca.renewal_info(facts.ari_id)
    except AcmeDirectoryUnreachable:
        raise
    except AcmeError as err:  # RenewalInfoUnusable: an answer, but none to use
        logger.warning("virtualhost %s: %s", host.hostname, err.message)
        recheck = err.retry_after or ari.recheck_time(None, now)
        recording.record_renewal_info(
            host, facts, None, now=now, recheck_at=recheck, threshold_days=threshold_days
        )
        return None
    if window is None:
        return None  # the CA offers no renewalInfo: nothing to store
    recording.record_renewal_info(
        host, facts, window, now=now, recheck_at=window.recheck_at, threshold_days=threshold_days
    )
    logger.info(
        "virtualhost %s: the CA suggests renewing between %s and %s; planned at %s%s",
        host.hostname,
        f"{window.start:%Y-%m-%d %H:%M} UTC",
        f"{window.end:%Y-%m-%d %H:%M} UTC",
        f"{host.ari_renew_at:%Y-%m-%d %H:%M} UTC" if host.ari_renew_at else "?",
        f" ({window.explanation_url})" if window.explanation_url else "",
    )
    return f"{host.ari_renew_at:%Y-%m-%d %H:%M} UTC" if host.ari_renew_at else None

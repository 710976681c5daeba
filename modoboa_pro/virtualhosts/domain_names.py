"""A Modoboa domain's usual names: which hosts they are, and the outcome of creating each.

Pure policy and plain values; ``services.create_domain_names`` creates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import constants

if TYPE_CHECKING:
    from .models import VirtualHost

# The outcome of one name.
CREATED = "created"  # saved; its provisioning is queued (and fails or succeeds on its own)
EXISTS = "exists"  # a host of that name was already there: left as it is
REFUSED = "refused"  # not created (an invalid or too long name): the message says why


@dataclass(frozen=True)
class UsualName:
    """One of a domain's usual names and what its host serves."""

    prefix: str
    site: str
    serves_mail: bool

    def hostname(self, domain_name: str) -> str:
        return f"{self.prefix}.{domain_name}"


# mail.<domain>: the name mail clients and MX records point at, its certificate deployed to
# Postfix and Dovecot. autoconfig.<domain> / autodiscover.<domain>: the names Thunderbird and
# Outlook look up to configure themselves, served over HTTPS by Modoboa's own endpoints.
USUAL_NAMES = (
    UsualName("mail", constants.SITE_WEB, serves_mail=True),
    UsualName("autoconfig", constants.SITE_AUTOCONFIG, serves_mail=False),
    UsualName("autodiscover", constants.SITE_AUTODISCOVER, serves_mail=False),
)


@dataclass(frozen=True)
class NameOutcome:
    """What became of one name; ``host`` is the host created or found (None if refused)."""

    hostname: str
    site: str
    serves_mail: bool
    outcome: str
    message: str
    host: VirtualHost | None = None


def summary(outcomes: list[NameOutcome]) -> str:
    """One line for the CLI and the API: "2 created, 1 already existed, 0 refused"."""
    counts = {kind: sum(1 for o in outcomes if o.outcome == kind) for kind in (CREATED, EXISTS)}
    refused = sum(1 for o in outcomes if o.outcome == REFUSED)
    return f"{counts[CREATED]} created, {counts[EXISTS]} already existed, {refused} refused"

"""Hostname validation: the only gate between admin input and paths/configs."""

from __future__ import annotations

import ipaddress
import re

from . import constants
from .errors import InvalidHostname

# After IDNA encoding a label is LDH only; underscores are not valid in hostnames.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_FORBIDDEN = set("/\\\"'`;{}$#*?[]()<>|&!%@,=~^+:") | {" ", "\t", "\n", "\r", "\x00"}


def normalize_hostname(value: str) -> str:
    """Return ``value`` as a lower-case ASCII (IDNA) FQDN, or raise InvalidHostname.

    The message says what to fix; it never echoes control characters.
    """
    if not isinstance(value, str):
        raise InvalidHostname("A hostname must be text.")
    name = value.strip()
    if not name:
        raise InvalidHostname("Enter a hostname, e.g. www.example.com.")
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]  # the root dot of an absolute name is implied
    bad = sorted({c for c in name if c in _FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join("space" if c == " " else repr(c) for c in bad)
        hint = " Wildcard certificates are not supported (they need DNS-01)." if "*" in bad else ""
        raise InvalidHostname(
            f"A hostname may contain only letters, digits, hyphens and dots; remove {shown}.{hint}"
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidHostname(
            "An IP address cannot be a virtual host: enter a DNS name that resolves to it."
        )
    ascii_labels = []
    for label in name.split("."):
        if not label:
            raise InvalidHostname(
                "A hostname cannot have empty labels (two dots in a row, or a leading dot)."
            )
        try:
            ascii_labels.append(label.encode("idna").decode("ascii").lower())
        except UnicodeError as err:
            if len(label) > constants.LABEL_MAX_LENGTH:
                raise InvalidHostname(
                    f"The label {label[:20]!r}... is {len(label)} characters; "
                    f"each dot-separated part is at most {constants.LABEL_MAX_LENGTH}."
                ) from err
            raise InvalidHostname(
                f"The label {label!r} is not a valid internationalised name: "
                "check for characters that are not allowed in domain names."
            ) from err
    ascii_name = ".".join(ascii_labels)
    if len(ascii_name) > constants.HOSTNAME_MAX_LENGTH:
        raise InvalidHostname(
            f"A hostname is at most {constants.HOSTNAME_MAX_LENGTH} characters "
            f"(this one has {len(ascii_name)} once IDNA-encoded)."
        )
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidHostname(
            f"{ascii_name!r} is not fully qualified: "
            f"enter the full name, e.g. {ascii_name}.example.com."
        )
    for label in labels:
        if len(label) > constants.LABEL_MAX_LENGTH:
            raise InvalidHostname(
                f"The label {label[:20]!r}... is {len(label)} characters; "
                f"each dot-separated part is at most {constants.LABEL_MAX_LENGTH}."
            )
        if not _LABEL_RE.match(label):
            raise InvalidHostname(
                f"The label {label!r} is invalid: use letters, digits and hyphens, "
                "not starting or ending with a hyphen."
            )
    if labels[-1].isdigit():
        raise InvalidHostname("The last label (the top-level domain) cannot be all digits.")
    return ascii_name

"""Dovecot by SNI: the plugin's include file of ``local_name`` blocks, in the syntax of
the installed Dovecot (2.3 and 2.4 name the certificate settings differently).

The operator includes it once from dovecot.conf (``!include_try``, docs/mail.md).
A file ``doveconf -n`` refuses is never left in place: the previous one is put back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import MailConfigRejected, MailError, UnsupportedDovecot
from . import mailfiles
from .mailfiles import SniEntry

INCLUDE_SETTING = "VIRTUALHOSTS_MAIL_DOVECOT_INCLUDE"
CONFIG_SETTING = "VIRTUALHOSTS_MAIL_DOVECOT_CONFIG"
COMMAND_SETTING = "VIRTUALHOSTS_MAIL_DOVECOT_COMMAND"
DOVECONF_SETTING = "VIRTUALHOSTS_MAIL_DOVECONF_COMMAND"
DOVEADM_SETTING = "VIRTUALHOSTS_MAIL_DOVEADM_COMMAND"

# The two syntaxes we know. 2.3: "ssl_cert = </path" (the "<" reads the file). 2.4 renamed
# them ssl_server_cert_file / ssl_server_key_file and takes the path itself.
SYNTAX_23 = (2, 3)
SYNTAX_24 = (2, 4)
SUPPORTED = (SYNTAX_23, SYNTAX_24)
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")


def include_line(include_path: Path) -> str:
    """The one line the operator adds to dovecot.conf (after its own ssl settings)."""
    return f"!include_try {include_path}"


def parse_version(output: str) -> tuple[int, int]:
    """``2.3.19.1 (9b53102964)`` -> (2, 3); refuses what it does not support."""
    match = _VERSION.match(output)
    if match is None:
        raise UnsupportedDovecot(
            f"Cannot read Dovecot's version from `dovecot --version` ({output.strip()!r}); "
            f"fix {COMMAND_SETTING} or turn the Dovecot deploy off (VIRTUALHOSTS_MAIL_SERVICES)."
        )
    version = (int(match.group(1)), int(match.group(2)))
    if version not in SUPPORTED:
        raise UnsupportedDovecot(
            f"Dovecot {version[0]}.{version[1]} is installed; the plugin writes local_name "
            "blocks for Dovecot 2.3 and 2.4 only. Remove 'dovecot' from "
            "VIRTUALHOSTS_MAIL_SERVICES and configure Dovecot's certificates by hand."
        )
    return version


def installed_version(dovecot: Sequence[str], timeout: float = 30) -> tuple[int, int]:
    code, output = mailfiles.run(
        [*dovecot, "--version"], what="dovecot --version", setting=COMMAND_SETTING, timeout=timeout
    )
    if code != 0:
        raise MailError(f"`dovecot --version` failed (exit {code}): {mailfiles.quote(output)}.")
    return parse_version(output)


def render(entries: Iterable[SniEntry], version: tuple[int, int]) -> str:
    """One ``local_name`` block per host, in ``version``'s syntax."""
    if version not in SUPPORTED:
        parse_version(f"{version[0]}.{version[1]}")  # raises, saying what is supported
    blocks = []
    for e in sorted(entries, key=lambda entry: entry.hostname):
        if version == SYNTAX_23:
            body = f"  ssl_cert = <{e.fullchain}\n  ssl_key = <{e.privkey}\n"
        else:
            body = f"  ssl_server_cert_file = {e.fullchain}\n  ssl_server_key_file = {e.privkey}\n"
        blocks.append(f"local_name {e.hostname} {{\n{body}}}\n")
    return mailfiles.HEADER + "".join(blocks)


def listed(include_path: Path, hostname: str) -> bool:
    """Whether the installed include has a block for ``hostname`` (no exception)."""
    try:
        text = Path(include_path).read_text()
    except OSError:
        return False
    return f"local_name {hostname} {{" in text


def install_include(
    include_path: Path,
    content: str,
    *,
    config: Path,
    doveconf: Sequence[str],
    timeout: float = 60,
) -> str:
    """Install the include, check the whole configuration with ``doveconf -n``; put the
    previous include back if it refuses. Returns doveconf's complaints, if any."""
    include_path = Path(include_path)
    mailfiles.check_dir(include_path, INCLUDE_SETTING, "Dovecot include")
    previous = mailfiles.read(include_path)
    mailfiles.install(include_path, content.encode())
    code, output = mailfiles.run(
        [*doveconf, "-n", "-c", str(config)],
        what="doveconf -n",
        setting=DOVECONF_SETTING,
        timeout=timeout,
    )
    if code != 0:
        mailfiles.install(include_path, previous)
        raise MailConfigRejected(
            f"doveconf -n refused the configuration with the new {include_path}: "
            f"{mailfiles.quote(output)}. The previous file was put back; Dovecot keeps "
            "serving the previous certificates.",
            output=output,
        )
    return ""  # the whole configuration: not worth keeping


def reload(config: Path, doveadm: Sequence[str], timeout: float = 60) -> str:
    """``doveadm reload``: Dovecot re-reads its configuration and the certificate files."""
    return mailfiles.reload(
        [*doveadm, "-c", str(config), "reload"],
        what="doveadm reload",
        setting=DOVEADM_SETTING,
        program="Dovecot",
        timeout=timeout,
    )

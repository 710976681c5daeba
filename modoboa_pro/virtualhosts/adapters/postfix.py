"""Postfix by SNI: the plugin's ``tls_server_sni_maps`` map, built with ``postmap -F``.

Postfix has no include directive in main.cf, and the plugin never edits main.cf
(``postconf -e`` would rewrite the operator's file as root). What the plugin owns
is one map file: one line per mail host name, its private key then its
certificate chain (the order Postfix requires). The operator points Postfix at
it once with the line :func:`main_cf_line` returns (docs/mail.md).

``postmap -F`` stores the files' contents in the ``.db``: a renewed certificate
is only served once the map is rebuilt, even if its text did not change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import MailConfigRejected
from . import mailfiles
from .mailfiles import SniEntry

MAP_SETTING = "VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP"
COMMAND_SETTING = "VIRTUALHOSTS_MAIL_POSTFIX_COMMAND"
POSTMAP_SETTING = "VIRTUALHOSTS_MAIL_POSTMAP_COMMAND"
# Debian's default database type; postmap writes <map>.db next to the text file.
MAP_TYPE = "hash"
DB_SUFFIX = ".db"
_WARNING = "warning:"


def main_cf_line(map_path: Path) -> str:
    """The one line the operator adds to main.cf."""
    return f"tls_server_sni_maps = {MAP_TYPE}:{map_path}"


def render_map(entries: Iterable[SniEntry]) -> str:
    """The map text: ``<hostname> <privkey> <fullchain>`` per host (``postmap -F`` format)."""
    lines = [f"{e.hostname} {e.privkey} {e.fullchain}\n" for e in sorted(entries, key=_name)]
    return mailfiles.HEADER + "".join(lines)


def _name(entry: SniEntry) -> str:
    return entry.hostname


def listed(map_path: Path, hostname: str) -> bool:
    """Whether the installed map has a line for ``hostname`` (no exception)."""
    try:
        text = Path(map_path).read_text()
    except OSError:
        return False
    return any(line.split(" ", 1)[0] == hostname for line in text.splitlines())


def _db(path: Path) -> Path:
    return path.with_name(path.name + DB_SUFFIX)


def install_map(
    map_path: Path,
    content: str,
    *,
    config_dir: Path,
    postmap: Sequence[str],
    postfix: Sequence[str],
    timeout: float = 60,
) -> str:
    """Build the map beside the live one, swap it in, run ``postfix check``; on any
    refusal the previous map (text and .db) is put back. Returns the commands' output."""
    map_path = Path(map_path)
    mailfiles.check_dir(map_path, MAP_SETTING, "Postfix SNI map")
    candidate = map_path.with_name(f".{map_path.name}.new")
    previous = (mailfiles.read(map_path), mailfiles.read(_db(map_path)))
    try:
        mailfiles.install(candidate, content.encode())
        code, output = mailfiles.run(
            [*postmap, "-c", str(config_dir), "-F", f"{MAP_TYPE}:{candidate}"],
            what="postmap",
            setting=POSTMAP_SETTING,
            timeout=timeout,
        )
        # postmap -F only warns about a file it cannot read, skips that name and exits 0:
        # a map missing a host would silently serve it the default certificate.
        if code != 0 or _WARNING in output:
            raise MailConfigRejected(
                f"postmap -F refused the SNI map: {mailfiles.quote(output)}. Postfix keeps "
                "its previous map.",
                output=output,
            )
        # The text first, the .db last: Postfix reads only the .db.
        os.replace(candidate, map_path)
        os.replace(_db(candidate), _db(map_path))
    finally:
        for leftover in (candidate, _db(candidate)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    code, checked = mailfiles.run(
        [*postfix, "-c", str(config_dir), "check"],
        what="postfix check",
        setting=COMMAND_SETTING,
        timeout=timeout,
    )
    if code != 0:
        mailfiles.install(map_path, previous[0])
        mailfiles.install(_db(map_path), previous[1])
        raise MailConfigRejected(
            f"postfix check refused the configuration with the new SNI map: "
            f"{mailfiles.quote(checked)}. The previous map was put back.",
            output=checked,
        )
    return output + checked


def reload(config_dir: Path, postfix: Sequence[str], timeout: float = 60) -> str:
    """``postfix reload``: new smtpd processes load the rebuilt map."""
    return mailfiles.reload(
        [*postfix, "-c", str(config_dir), "reload"],
        what="postfix reload",
        setting=COMMAND_SETTING,
        program="Postfix",
        timeout=timeout,
    )

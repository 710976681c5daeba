"""Hostname validation: the only gate between admin input and paths/configs."""

from __future__ import annotations

import ipaddress
import re
import string
import unicodedata

import idna

from . import constants
from .adapters import files, nginx, storage
from .errors import InvalidHostname

# Longest text looked at. No valid name comes near it, even typed in decomposed Unicode that
# NFC composes; a 10,000-character paste is refused before it reaches the IDNA code.
INPUT_MAX_LENGTH = 1024
# How much of a bad label a message quotes: enough to find it, short enough to read.
SHOWN_MAX_LENGTH = 40
# The ACE prefix of an A-label (RFC 5890); other labels may not have "--" in positions 3-4.
ACE_PREFIX = "xn--"

# ASCII that can never be in a host name (letters, digits, '-' and '.' can).
_FORBIDDEN = frozenset(string.punctuation + " ") - {"-", "."}
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# IDNA 2008 keeps these invisible characters where the context rules (CONTEXTJ) allow them.
_JOINERS = frozenset("\u200c\u200d")
_CONTROL_NAMES = {"\0": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN"}
_IDNA2008_CLASSES = ("PVALID", "CONTEXTJ", "CONTEXTO")


def normalize_hostname(value: object) -> str:
    """Return ``value`` as a lower-case ASCII FQDN (A-labels), or raise InvalidHostname.

    Names are processed as browsers resolve them: UTS #46 non-transitional mapping, then
    IDNA 2008 (RFC 5891-5893) through the ``idna`` package. So case and full-width forms
    are mapped (``ＷＷＷ.Example.COM`` is ``www.example.com``), and ``ß``, ``ς``, ZWJ and
    ZWNJ are kept: ``straße.example`` is ``xn--strae-oqa.example``, not IDNA 2003's
    ``strasse.example``.

    Refused, with a message that says what to fix and never echoes a control character:

    - anything invisible that browsers would drop or refuse (soft hyphen, zero-width space,
      direction marks, variation selectors...): the admin would get another name than the
      one typed. ZWNJ (U+200C) and ZWJ (U+200D) are allowed only where IDNA 2008's CONTEXTJ
      rule allows them (after a virama; ZWNJ also between joining Arabic-script letters):
      that is where they change what a reader sees;
    - spaces, punctuation and wildcards (``*.example.com`` needs DNS-01), IP literals
      (``192.0.2.1``, ``::1``, ``[::1]``), empty labels;
    - characters IDNA 2008 disallows (emoji, symbols), context rules, the Bidi rule;
    - ``xn--`` labels that are not valid Punycode, do not decode to a valid U-label, or are
      not the canonical encoding of it. ``XN--`` is the same prefix (UTS #46 maps case
      first) and is checked the same way; a valid one is stored in lower case;
    - other labels with ``--`` in positions 3-4 (reserved, e.g. ``ab--cd``): CAs refuse them;
    - labels over 63 characters, names over 253, names whose files would not fit
      (``max_hostname_length``, 232 today), single-label names and all-digit TLDs.

    One trailing dot (an absolute name) is dropped. ``localhost`` and ``localhost.`` are
    both refused: a single label is not fully qualified and no CA issues a certificate
    for it.
    """
    name = _text(value)
    _refuse_hidden(name)
    _refuse_ip_literal(name)
    _refuse_punctuation(name)
    labels = _labels(_map(name))
    ascii_name = ".".join(_ascii_label(label) for label in labels)
    _check_length(ascii_name)
    _check_structure(ascii_name)
    return ascii_name


def max_hostname_length() -> int:
    """The longest name whose every file name fits in ``files.NAME_MAX`` bytes (or 253)."""
    probe = "a.example"
    extra = max(len(n.encode()) for n in file_names(probe)) - len(probe)
    return min(constants.HOSTNAME_MAX_LENGTH, files.NAME_MAX - extra)


def file_names(hostname: str) -> list[str]:
    """Every file-name component the adapters derive from ``hostname``, each at its longest."""
    return [*nginx.hostname_file_names(hostname), *storage.hostname_file_names(hostname)]


# -- showing what was typed ---------------------------------------------------


def _show(text: str) -> str:
    """``text`` quoted, with invisible and control characters escaped, shortened."""
    shown = "".join(c if c.isprintable() else _escape(c) for c in text)
    if len(shown) > SHOWN_MAX_LENGTH:
        shown = shown[: SHOWN_MAX_LENGTH - 3] + "..."
    return f"'{shown}'"


def _escape(char: str) -> str:
    """``\\n``-style escapes, as Python's repr writes them."""
    return repr(char)[1:-1]


def _describe(char: str) -> str:
    """``U+200D ZERO WIDTH JOINER``; ``'😀' (U+1F600 GRINNING FACE)`` when it is visible."""
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "")
    code = f"U+{ord(char):04X}" + (f" {name}" if name else "")
    visible = unicodedata.category(char)[0] in "LNPS"
    return f"'{char}' ({code})" if visible else code


# -- the steps, in order --------------------------------------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidHostname("A hostname must be text, e.g. www.example.com.")
    if len(value) > INPUT_MAX_LENGTH:
        raise InvalidHostname(
            f"A hostname is at most {constants.HOSTNAME_MAX_LENGTH} characters; this text has "
            f"{len(value)}. Enter only the host's name, e.g. www.example.com."
        )
    name = value.strip()
    if not name:
        raise InvalidHostname("Enter a hostname, e.g. www.example.com.")
    return name


def _refuse_hidden(name: str) -> None:
    """Control characters, invisible ones, non-ASCII spaces and broken Unicode."""
    for char in name:
        category = unicodedata.category(char)
        if char in _JOINERS:
            continue  # judged by the CONTEXTJ rule with its label
        if category == "Cc":
            raise InvalidHostname(
                f"A hostname cannot contain control characters: remove {_describe(char)}."
            )
        if category == "Cs":
            raise InvalidHostname(
                f"The hostname is not valid Unicode (it contains a lone surrogate, "
                f"{_describe(char)}): type it again."
            )
        if category in ("Zs", "Zl", "Zp") and char != " ":
            raise InvalidHostname(
                f"A hostname cannot contain spaces or line breaks: remove {_describe(char)}."
            )
        if category == "Cf" or _ignored(char):
            raise InvalidHostname(_invisible_message(name, char))


def _ignored(char: str) -> bool:
    """Whether UTS #46 drops ``char`` (soft hyphen, zero-width space, variation selectors)."""
    try:
        return idna.uts46_remap(char, std3_rules=False, transitional=False) == ""
    except (idna.IDNAError, ValueError):
        return False


def _invisible_message(name: str, char: str) -> str:
    if _ignored(char):
        without = name.replace(char, "")
        consequence = (
            "which browsers silently drop: the name would really be "
            f"{_show(without)}, not what you typed"
        )
    else:
        consequence = "which is not allowed in host names"
    return (
        f"The hostname contains {_describe(char)}, an invisible character {consequence}. "
        "Remove it (type the name rather than pasting it)."
    )


def _refuse_ip_literal(name: str) -> None:
    candidates = {name, name.rstrip(".")}
    if name.startswith("[") and name.endswith("]"):
        candidates.add(name[1:-1])
    for candidate in candidates:
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            continue
        raise InvalidHostname(
            "An IP address cannot be a virtual host: enter a DNS name that resolves to it."
        )


def _read_as(char: str) -> str:
    """What UTS #46 maps ``char`` to (without STD3 rules), or ``char`` if it has no mapping."""
    try:
        return idna.uts46_remap(char, std3_rules=False, transitional=False)
    except (idna.IDNAError, ValueError):
        return char


def _refuse_punctuation(name: str) -> None:
    bad: dict[str, str] = {}
    for char in name:
        mapped = _read_as(char)
        if any(c in _FORBIDDEN for c in mapped):
            bad[char] = mapped
    if not bad:
        return
    shown = ", ".join(_punctuation(char, mapped) for char, mapped in sorted(bad.items()))
    wildcard = any("*" in mapped for mapped in bad.values())
    hint = " Wildcard certificates are not supported (they need DNS-01)." if wildcard else ""
    raise InvalidHostname(
        f"A hostname may contain only letters, digits, hyphens and dots; remove {shown}.{hint}"
    )


def _punctuation(char: str, mapped: str) -> str:
    if char == " ":
        return "space"
    if char.isascii():
        return repr(char)
    return f"{_describe(char)}, read as {'space' if mapped == ' ' else repr(mapped)}"


def _map(name: str) -> str:
    """UTS #46 non-transitional mapping (case, width, dots such as '。'), as browsers do."""
    try:
        return idna.uts46_remap(name, std3_rules=True, transitional=False)
    except (idna.IDNAError, ValueError) as err:
        for char in name:
            try:
                idna.uts46_remap(char, std3_rules=True, transitional=False)
            except (idna.IDNAError, ValueError):
                raise InvalidHostname(
                    f"The hostname contains {_describe(char)}, which is not allowed in host "
                    "names. Remove it."
                ) from err
        raise InvalidHostname(
            f"{_show(name)} is not a valid internationalised name: check for characters "
            "that are not allowed in domain names."
        ) from err


def _labels(mapped: str) -> list[str]:
    if mapped.endswith(".") and not mapped.endswith(".."):
        mapped = mapped[:-1]  # the root dot of an absolute name is implied
    labels = mapped.split(".")
    if not all(labels):
        raise InvalidHostname(
            "A hostname cannot have empty labels (two dots in a row, or a leading dot)."
        )
    return labels


def _ascii_label(label: str) -> str:
    """The label as stored: itself if it is LDH, its A-label if it is Unicode."""
    if label.isascii():
        return _checked_ascii_label(label)
    return _a_label(label)


def _checked_ascii_label(label: str) -> str:
    _check_label_length(label, label)
    if label.startswith(ACE_PREFIX):
        _check_a_label(label)
    elif label[2:4] == "--":
        raise _reserved(label)
    if not _LABEL_RE.match(label):
        raise InvalidHostname(
            f"The label {_show(label)} is invalid: use letters, digits and hyphens, "
            "not starting or ending with a hyphen."
        )
    return label


def _check_label_length(label: str, encoded: str) -> None:
    if len(encoded) > constants.LABEL_MAX_LENGTH:
        once = "" if label == encoded else " once IDNA-encoded"
        raise InvalidHostname(
            f"The label {_show(label)} is {len(encoded)} characters{once}; "
            f"each dot-separated part is at most {constants.LABEL_MAX_LENGTH}."
        )


def _reserved(label: str) -> InvalidHostname:
    return InvalidHostname(
        f"The label {_show(label)} has '--' as its 3rd and 4th characters, which DNS reserves "
        f"for encoded labels ({ACE_PREFIX}...); certificate authorities refuse it. "
        "Choose another name."
    )


def _check_a_label(label: str) -> None:
    """An ``xn--`` label must decode to a valid U-label that encodes back to it exactly."""
    why = _a_label_problem(label)
    if why:
        raise InvalidHostname(
            f"The label {_show(label)} is not a valid encoded label: {why}; certificate "
            "authorities refuse it. Type the name in its Unicode form (e.g. bücher.example) "
            f"or copy its exact {ACE_PREFIX} form again."
        )


def _a_label_problem(label: str) -> str:
    """Why ``label`` is not an A-label, or "" if it is one."""
    try:
        decoded = label[len(ACE_PREFIX) :].encode("ascii").decode("punycode")
    except UnicodeError:
        return f"what follows {ACE_PREFIX} is not valid Punycode"
    if not decoded:
        return f"nothing follows {ACE_PREFIX}"
    if decoded.isascii():
        return f"it decodes to plain ASCII ({_show(decoded)}), which needs no {ACE_PREFIX}"
    try:
        idna.check_label(decoded)
        encoded = idna.alabel(decoded).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return f"it decodes to {_show(decoded)}, which IDNA 2008 does not allow"
    if encoded != label:
        # Another spelling of the same U-label: a "fake A-label" (RFC 5890, 2.3.2.1).
        return f"it is not the standard encoding of {_show(decoded)}, which is {encoded}"
    return ""


def _a_label(label: str) -> str:
    """The A-label of a (mapped, NFC) Unicode label, after IDNA 2008's checks."""
    encoded = ACE_PREFIX + label.encode("punycode").decode("ascii")
    _check_label_length(label, encoded)
    _check_unicode_shape(label)
    try:
        return idna.alabel(label).decode("ascii")
    except idna.InvalidCodepointContext as err:
        raise InvalidHostname(_context_message(label)) from err
    except idna.IDNABidiError as err:
        raise InvalidHostname(
            f"The label {_show(label)} breaks IDNA 2008's rule for right-to-left text "
            "(RFC 5893): a label with Arabic or Hebrew characters must start with a "
            "right-to-left letter, end with a letter or a digit, and contain no "
            "left-to-right letters. Write each label in one direction."
        ) from err
    except (idna.IDNAError, ValueError) as err:
        raise InvalidHostname(
            f"The label {_show(label)} is not a valid internationalised name (IDNA 2008): "
            "check for characters that are not allowed in domain names."
        ) from err


def _check_unicode_shape(label: str) -> None:
    """Hyphens, a leading combining mark, disallowed characters: said before idna says it."""
    if label.startswith("-") or label.endswith("-"):
        raise InvalidHostname(
            f"The label {_show(label)} is invalid: it must not start or end with a hyphen."
        )
    if label[2:4] == "--":
        raise _reserved(label)
    if unicodedata.category(label[0]).startswith("M"):
        raise InvalidHostname(
            f"The label {_show(label)} starts with a combining mark, {_describe(label[0])}: "
            "put it after the letter it belongs to, or remove it."
        )
    for char in label:
        if not _idna2008_allowed(char):
            raise InvalidHostname(
                f"The label {_show(label)} contains {_describe(char)}, which IDNA 2008 does "
                "not allow in host names (emoji, symbols and punctuation are not), and "
                "certificate authorities refuse it. Remove it."
            )


def _idna2008_allowed(char: str) -> bool:
    return any(_in_class(char, name) for name in _IDNA2008_CLASSES)


def _in_class(char: str, name: str) -> bool:
    """Whether ``char`` is in one of RFC 5892's classes (PVALID, CONTEXTJ, CONTEXTO)."""
    return idna.intranges_contain(ord(char), idna.idnadata.codepoint_classes[name])


def _context_message(label: str) -> str:
    joiners = [c for c in label if c in _JOINERS]
    if "\u200d" in joiners:
        where = "only right after a virama (the vowel-killer sign of Indic scripts)"
        char = "\u200d"
    elif joiners:
        where = "only after a virama or between letters that join, as in Arabic or Persian"
        char = "\u200c"
    else:
        contextual = [c for c in label if _in_class(c, "CONTEXTO")] or [label[0]]
        return (
            f"The label {_show(label)} contains {_describe(contextual[0])}, "
            "which IDNA 2008 allows only next to certain characters (RFC 5892), e.g. the "
            "Catalan middle dot only between two l's. Remove it or fix what surrounds it."
        )
    return (
        f"The label {_show(label)} contains {_describe(char)}, an invisible character that "
        f"IDNA 2008 allows {where}; certificate authorities refuse it here. Remove it "
        "(type the name rather than pasting it)."
    )


def _check_length(name: str) -> None:
    limit = max_hostname_length()
    if len(name) > constants.HOSTNAME_MAX_LENGTH:
        raise InvalidHostname(
            f"A hostname is at most {constants.HOSTNAME_MAX_LENGTH} characters in DNS, and "
            f"{limit} here (this one has {len(name)} once IDNA-encoded)."
        )
    components = file_names(name)
    if any(len(component.encode()) > files.NAME_MAX for component in components):
        longest = max(components, key=len).replace(name, "<hostname>")
        raise InvalidHostname(
            f"A hostname is at most {limit} characters here (this one has {len(name)} once "
            f"IDNA-encoded): files are named after it, the longest {longest}, and a file "
            f"name is at most {files.NAME_MAX} bytes."
        )


def _check_structure(name: str) -> None:
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidHostname(
            f"{name!r} is not fully qualified: enter the full name, e.g. {name}.example.com."
        )
    if labels[-1].isdigit():
        raise InvalidHostname("The last label (the top-level domain) cannot be all digits.")

"""Hostname validation as properties: what it accepts, nginx and the file system accept.

For any text, ``normalize_hostname`` either returns a lower-case LDH name that is what browsers
resolve (UTS #46 non-transitional), drops nothing that was typed, and whose every file name
fits NAME_MAX; or it raises InvalidHostname with a one-line message free of control and
invisible characters. Every accepted name then gets its real site files, certificate pair and
archive through the real adapters (paths checked to stay inside their directories), and the
real ``nginx -t`` accepts both of its sites, many names to a run.
"""

from __future__ import annotations

import os
import string
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import idna
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from modoboa_pro.testing import NginxServer
from modoboa_pro.virtualhosts import constants, hostnames
from modoboa_pro.virtualhosts.adapters import files, nginx, storage
from modoboa_pro.virtualhosts.errors import InvalidHostname, NginxConfigTestFailed
from modoboa_pro.virtualhosts.hostnames import normalize_hostname
from modoboa_pro.virtualhosts.rendering import SiteContext, render_http_only, render_https

from .adapters.helpers import make_pair

pytestmark = pytest.mark.properties

# Examples per property. The accepted-names property writes files and runs nginx for each
# accepted name (a few ms each); the any-text one is pure (well under a ms each).
ACCEPTED_EXAMPLES = 300
ANY_TEXT_EXAMPLES = 1000
# Sites per `nginx -t` run: a config of 100 sites tests in milliseconds; one run per name
# would cost a process start each.
NGINX_BATCH = 100

LONGEST = hostnames.max_hostname_length()


def exact_name(length: int, label: int = 63, fill: str = "a") -> str:
    """A name of exactly ``length`` characters, labels of at most ``label``."""
    labels: list[str] = []
    left = length
    while left > 0:
        size = min(label, left)
        if left - size == 1:  # a last label of 0 characters after the dot: shorten this one
            size -= 2
        labels.append(fill * size)
        left -= size + 1
    name = ".".join(labels)
    assert len(name) == length
    return name


# What admins type, and what is stored.
ACCEPTED = {
    "straße.example": "xn--strae-oqa.example",  # IDNA 2008 keeps ß (IDNA 2003: strasse)
    "bücher.example": "xn--bcher-kva.example",
    "Bücher.EXAMPLE": "xn--bcher-kva.example",
    "WWW.Example.COM": "www.example.com",
    "ＷＷＷ．ＥＸＡＭＰＬＥ．ＣＯＭ": "www.example.com",  # full-width forms and dot
    "bücher。example": "xn--bcher-kva.example",  # ideographic full stop
    "www.example.com.": "www.example.com",  # an absolute name
    "  mail.example.org \n": "mail.example.org",  # surrounding white space
    "ς.example": "xn--3xa.example",  # final sigma kept (IDNA 2003: σ)
    "مثال.example": "xn--mgbh0fb.example",  # Arabic, right to left
    "שלום.example": "xn--9dbne9b.example",  # Hebrew
    "مثال.שלום.example": "xn--mgbh0fb.xn--9dbne9b.example",
    "مثال1.example": "xn--1-ymcl5hc.example",  # an RTL label may end with a digit
    "пример.рф": "xn--e1afmkfd.xn--p1ai",
    "例え.テスト": "xn--r8jz45g.xn--zckzah",
    "bücher.пример.example": "xn--bcher-kva.xn--e1afmkfd.example",  # scripts per label
    "pаypal.example": "xn--pypal-4ve.example",  # Latin and Cyrillic а: IDNA 2008 allows it
    "क्\u200dष.example": "xn--11b2ezcw70k.example",  # ZWJ right after a virama (CONTEXTJ)
    "می\u200cخواهم.example": "xn--mgbn2ecje63gr19l.example",  # ZWNJ between joining letters
    "l·l.example": "xn--ll-0ea.example",  # Catalan middle dot between two l (CONTEXTO)
    "xn--bcher-kva.example": "xn--bcher-kva.example",
    "XN--BCHER-KVA.example": "xn--bcher-kva.example",  # the same prefix, mapped to lower case
    "a-b.c-d.example": "a-b.c-d.example",
    "a" * 63 + ".example": "a" * 63 + ".example",  # the longest label
    exact_name(LONGEST): exact_name(LONGEST),  # the longest name whose files fit
}

# What admins type, and a fragment of the message that tells them what to fix.
REFUSED = {
    "": "Enter a hostname",
    "   ": "Enter a hostname",
    "localhost": "not fully qualified",
    "localhost.": "not fully qualified",  # the root dot does not make it qualified
    "a" * 64 + ".example": "at most 63",
    exact_name(LONGEST + 1): f"at most {LONGEST} characters",
    exact_name(253): f"at most {LONGEST} characters",  # valid in DNS, its files do not fit
    exact_name(254): "at most 253 characters",
    exact_name(300, label=30): "at most 253 characters",
    "x" * 10_000: "at most 253 characters",
    "..": "empty labels",
    ".": "empty labels",
    "a..example.com": "empty labels",
    ".example.com": "empty labels",
    "/": "remove '/'",
    "../../etc/passwd": "remove '/'",
    "a/b.example.com": "remove '/'",
    "a\\b.example.com": "remove '\\\\'",
    "a\x00b.example.com": "U+0000 NUL",
    "a\nb.example.com": "U+000A LINE FEED",
    "www.example.com\r\nX-Injected: 1": "U+000D CARRIAGE RETURN",
    "a\tb.example.com": "U+0009",
    "x.example.com;include /etc/shadow": "remove",
    "x.example.com;": "remove ';'",
    "x{.example.com": "remove '{'",
    "x}.example.com": "remove '}'",
    'x".example.com': "remove '\"'",
    "x'.example.com": 'remove "\'"',
    "$host.example.com": "remove '$'",
    "x y.example.com": "remove space",
    "a_b.example.com": "remove '_'",
    "*.example.com": "Wildcard certificates are not supported",
    "＊.example.com": "Wildcard certificates are not supported",  # full-width asterisk
    "a／b.example.com": "U+FF0F",
    "192.0.2.1": "An IP address cannot be a virtual host",
    "192.0.2.1.": "An IP address cannot be a virtual host",
    "::1": "An IP address cannot be a virtual host",
    "[::1]": "An IP address cannot be a virtual host",
    "2001:db8::1": "An IP address cannot be a virtual host",
    "[2001:db8::1]": "An IP address cannot be a virtual host",
    "1.2.3": "top-level domain",
    "example.123": "top-level domain",
    "-a.example.com": "hyphen",
    "a-.example.com": "hyphen",
    "ab--cd.example.com": "reserves for encoded labels",  # R-LDH, not xn--
    "r3---sn-abc.example.com": "reserves for encoded labels",
    "a\u200db.example": "U+200D ZERO WIDTH JOINER",  # no virama before it
    "\u200dwww.example": "U+200D ZERO WIDTH JOINER",
    "a\u200cb.example": "U+200C ZERO WIDTH NON-JOINER",
    "a\u00adb.example": "U+00AD SOFT HYPHEN",  # browsers would drop it: another name
    "a\u200bb.example": "U+200B ZERO WIDTH SPACE",
    "a\u2060b.example": "U+2060 WORD JOINER",
    "a\ufe0fb.example": "U+FE0F VARIATION SELECTOR-16",
    "\u202eevil.example": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "a\u200eb.example": "U+200E LEFT-TO-RIGHT MARK",
    "a\u00a0b.example": "U+00A0 NO-BREAK SPACE",
    "a\u3000b.example": "U+3000 IDEOGRAPHIC SPACE",
    "💩.example": "U+1F4A9",  # emoji: disallowed by IDNA 2008
    "😀.example": "U+1F600",
    "☃.example": "U+2603",
    "a⒈example": "U+2488",  # maps to "1." under UTS #46: not a letter, digit or hyphen
    "aשלום.example": "right-to-left",  # LTR and RTL letters in one label (Bidi rule)
    "1مثال.example": "right-to-left",  # an RTL label starting with a digit
    "a·b.example": "U+00B7 MIDDLE DOT",  # CONTEXTO: only between two l
    "\u0301a.example": "combining mark",
    "xn--abc.example": "not a valid encoded label",  # decodes to control characters
    "xn--ls8h.example": "not a valid encoded label",  # decodes to an emoji
    "xn--0.example": "not valid Punycode",
    "XN--0.example": "not valid Punycode",  # the prefix in upper case is checked too
    "Xn--ls8h.example": "not a valid encoded label",
    "xn--zz-.example": "plain ASCII",
    "xn--.example": "nothing follows xn--",
    "xn---bbk.example": "not the standard encoding",  # a fake A-label of xn--bbk
    "\ud800.example": "not valid Unicode",  # a lone surrogate, as JSON can carry
}


# -- checks -----------------------------------------------------------------------------


def check_refusal(error: InvalidHostname) -> str:
    message = str(error)
    assert message.strip(), "an empty message"
    hidden = [c for c in message if unicodedata.category(c) in ("Cc", "Cf", "Cs")]
    assert not hidden, f"the message shows {hidden!r}: {message!r}"
    return message


def path_components(name: str) -> list[str]:
    """Every file name the real adapters' path functions build from ``name``."""
    site = nginx.site_path(Path("/conf"), name).name
    link = storage.certificate_paths(Path("/storage"), name)[0].parent.name
    return [
        site,
        files.longest_temp_name(site),  # files.atomic_write's temporary file
        link,
        files.longest_temp_name(link, storage.LINK_TEMP_SUFFIX),
        storage.archive_name(name, files.utc_stamp(), storage.ARCHIVE_COUNTER_MAX),
        *hostnames.file_names(name),
    ]


def check_accepted(typed: str, name: str) -> None:
    labels = name.split(".")
    assert name.isascii() and name == name.lower()
    assert len(labels) >= 2 and all(1 <= len(label) <= 63 for label in labels)
    assert len(name) <= LONGEST <= constants.HOSTNAME_MAX_LENGTH
    assert files.safe_hostname(name) == name
    assert normalize_hostname(name) == name  # a stored name stays valid
    # Nothing typed was dropped silently: every character survives UTS #46 mapping...
    assert all(idna.uts46_remap(c, std3_rules=False, transitional=False) for c in typed.strip())
    # ...and the name is the one browsers resolve.
    resolved = idna.encode(typed.strip(), uts46=True, transitional=False).decode("ascii")
    assert resolved.removesuffix(".") == name
    for component in path_components(name):
        assert len(component.encode()) <= files.NAME_MAX, component


def check(typed: str, accepted: Callable[[str], None] | None = None) -> str | None:
    """Normalise ``typed``; check the name or the refusal; return the name, if accepted."""
    try:
        name = normalize_hostname(typed)
    except InvalidHostname as err:
        check_refusal(err)
        return None
    check_accepted(typed, name)
    if accepted is not None:
        accepted(name)
    return name


# -- strategies -------------------------------------------------------------------------

LDH = string.ascii_letters + string.digits + "-"
SCRIPTS = [
    string.ascii_lowercase + string.digits,
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœ" + string.ascii_lowercase,
    "αβγδεζηθικλμνξοπρσςτυφχψωάέήίόύώ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяё",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "אבגדהוזחטיכלמנסעפצקרשת",
    "कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह\u094d\u200d\u200c",  # with virama and joiners
    "日本語中文字例漢あいうえおかきくけこアイウエオ",
    "กขคงจฉชซญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮ",
]
# Characters that must never get through, inserted into otherwise valid names.
DANGEROUS = list("/\\\x00\n\r\t ;{}\"'$*:@%#?[]()<>|&!`~=+,_") + [
    "..",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u00ad",
    "\u202e",
    "\ufe0f",
    "\u3000",
    "💩",
    "xn--",
    "--",
    "-",
]

ldh_label = st.text(LDH, min_size=1, max_size=63)
unicode_label = st.sampled_from(SCRIPTS).flatmap(
    lambda chars: st.text(chars, min_size=1, max_size=20)
)
label = st.one_of(ldh_label, ldh_label.map(str.lower), unicode_label)


def _variant(name: str, how: str) -> str:
    if how == "upper":
        return name.upper()
    if how == "dot":
        return name + "."
    if how == "fullwidth":  # ASCII letters and digits as their full-width forms
        return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in name)
    return name


def _long_name(args: tuple[int, int, str]) -> str:
    length, size, fill = args
    return exact_name(length, label=size, fill=fill)


names = st.builds(
    _variant,
    st.lists(label, min_size=2, max_size=5).map(".".join),
    st.sampled_from(["as is", "as is", "upper", "dot", "fullwidth"]),
)
long_names = st.tuples(
    st.integers(min_value=200, max_value=260),
    st.integers(min_value=30, max_value=63),
    st.sampled_from(["a", "z", "9", "é"]),
).map(_long_name)
likely_names = st.one_of(names, names, names, long_names)


def _insert(args: tuple[str, int, str]) -> str:
    name, at, bad = args
    at %= len(name) + 1
    return name[:at] + bad + name[at:]


mutated_names = st.tuples(names, st.integers(min_value=0), st.sampled_from(DANGEROUS)).map(_insert)
any_text = st.one_of(
    st.text(max_size=300),
    st.text(string.printable + "\u200b\u200c\u200d\u00ad\u3002\uff0e\uff0a", max_size=80),
    mutated_names,
    likely_names,
)


# -- real files and nginx ---------------------------------------------------------------


def inside(path: Path, directory: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))


class Sites:
    """Real site files, certificate pairs and archives for accepted names; nginx in batches."""

    def __init__(self, workdir: Path) -> None:
        self.server = NginxServer(workdir / "nginx")
        self.server.prepare()  # its nginx.conf, as docs/nginx.md asks; never started
        self.conf_dir = self.server.sites_dir
        self.root = workdir / "acme"
        files.ensure_dir(self.root, constants.STORAGE_ROOT_MODE)
        self.pair = make_pair()
        self.names: dict[str, None] = {}  # accepted names, in order, once each
        self.nginx_runs = 0
        self.nginx_seconds = 0.0

    def add(self, name: str) -> None:
        self.names.setdefault(name)

    def verify(self) -> None:
        names = list(self.names)
        for start in range(0, len(names), NGINX_BATCH):
            batch = names[start : start + NGINX_BATCH]
            for name in batch:
                self._store(name)
            self._nginx_accepts(batch, render_http_only)
            self._nginx_accepts(batch, render_https)
            for name in batch:
                self._remove(name)

    def _context(self, name: str) -> SiteContext:
        fullchain, privkey = storage.certificate_paths(self.root, name)
        return SiteContext(
            hostname=name,
            http_port=self.server.http_port,
            https_port=self.server.https_port,
            listen_address="127.0.0.1",
            webroot=self.root / constants.WEBROOT_DIRNAME,
            fullchain=fullchain,
            privkey=privkey,
            upstream="http://127.0.0.1:9",
            upstream_protocol="http",
        )

    def _store(self, name: str) -> None:
        certs = self.root / constants.CERTS_DIRNAME
        version = storage.write_certificate_pair(self.root, name, *self.pair)
        assert version.parent == certs / storage.PAIRS_DIRNAME / name
        assert inside(version, certs / storage.PAIRS_DIRNAME)
        for path in storage.certificate_paths(self.root, name):
            assert path.parent.parent == certs and inside(path, version)
            assert path.read_bytes()

    def _write(self, name: str, render: Callable[[SiteContext], str]) -> Path:
        nginx.write_site(self.conf_dir, name, render(self._context(name)))
        path = nginx.site_path(self.conf_dir, name)
        assert path.parent == self.conf_dir and inside(path, self.conf_dir) and path.is_file()
        return path

    def _run_nginx(self) -> None:
        started = time.monotonic()
        try:
            nginx.run_test(self.server.test_command)
        finally:
            self.nginx_runs += 1
            self.nginx_seconds += time.monotonic() - started

    def _nginx_accepts(self, batch: list[str], render: Callable[[SiteContext], str]) -> None:
        for name in batch:
            self._write(name, render)
        try:
            self._run_nginx()
        except NginxConfigTestFailed as err:
            pytest.fail(f"nginx -t refuses the site of {self._culprit(batch, render)}: {err}")

    def _culprit(self, batch: list[str], render: Callable[[SiteContext], str]) -> str:
        """The first name whose site alone fails nginx -t."""
        for name in batch:
            nginx.remove_site(self.conf_dir, name)
        for name in batch:
            self._write(name, render)
            try:
                self._run_nginx()
            except NginxConfigTestFailed:
                return repr(name)
            nginx.remove_site(self.conf_dir, name)
        return "the batch (no site fails alone)"

    def _remove(self, name: str) -> None:
        nginx.remove_site(self.conf_dir, name)
        assert not nginx.site_path(self.conf_dir, name).exists()
        archive = storage.archive_host(self.root, name)
        assert archive is not None
        archives = self.root / constants.ARCHIVE_DIRNAME
        assert archive.parent == archives and inside(archive, archives)
        for path in archive.rglob("*"):
            assert inside(path.parent, archive)
            assert all(len(p.encode()) <= files.NAME_MAX for p in path.relative_to(self.root).parts)


# -- the explicit cases ------------------------------------------------------------------


@pytest.mark.parametrize("typed", ACCEPTED, ids=lambda typed: ascii(typed)[:40])
def test_accepted_names_are_stored_as_browsers_resolve_them(typed: str) -> None:
    assert check(typed) == ACCEPTED[typed]


@pytest.mark.parametrize("typed", REFUSED, ids=lambda typed: ascii(typed)[:40])
def test_refused_names_say_what_to_fix(typed: str) -> None:
    with pytest.raises(InvalidHostname) as info:
        normalize_hostname(typed)
    message = check_refusal(info.value)
    assert REFUSED[typed] in message, message


def test_the_longest_accepted_name_is_what_the_file_names_allow() -> None:
    longest = max(len(c) for c in hostnames.file_names(exact_name(LONGEST)))
    assert longest == files.NAME_MAX  # the binding file name is exactly at the limit
    assert LONGEST == 232  # today: .<hostname>.conf.<12 hex>.tmp is the longest


# -- the properties --------------------------------------------------------------------


def test_accepted_names_make_sites_nginx_accepts_and_paths_inside_their_directories(
    tmp_path: Path,
) -> None:
    """Hypothesis names (and the explicit ones) through real files and the real nginx -t."""
    sites = Sites(tmp_path)
    for typed in ACCEPTED:
        check(typed, sites.add)

    outcomes = {"accepted": 0, "refused": 0}

    @settings(
        max_examples=ACCEPTED_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(likely_names)
    def collect(typed: str) -> None:
        outcome = "accepted" if check(typed, sites.add) else "refused"
        outcomes[outcome] += 1
        event(outcome)

    collect()
    assert len(sites.names) >= ACCEPTED_EXAMPLES // 3, "the strategy should mostly make names"
    assert any(len(name) == LONGEST for name in sites.names)
    sites.verify()
    assert sites.nginx_runs == 2 * -(-len(sites.names) // NGINX_BATCH)
    print(
        f"\nhypothesis examples: {outcomes}; {len(sites.names)} distinct accepted names "
        f"(with the explicit ones) through files and {sites.nginx_runs} nginx -t runs "
        f"in {sites.nginx_seconds:.2f} s"
    )


@settings(max_examples=ANY_TEXT_EXAMPLES, deadline=None)
@given(any_text)
def test_any_text_is_a_clean_name_or_a_printable_refusal(typed: str) -> None:
    event("accepted" if check(typed) else "refused")

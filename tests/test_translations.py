"""The committed French catalog is complete and compiled from its source."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LOCALE = Path(__file__).resolve().parent.parent / "modoboa_pro/virtualhosts/locale/fr/LC_MESSAGES"


def test_every_backend_string_has_a_french_translation():
    text = (LOCALE / "django.po").read_text()
    untranslated = re.findall(r'\nmsgid "(.+)"\nmsgstr ""\n', text)
    assert not untranslated
    assert 'msgstr[0] ""' not in text and "#, fuzzy" not in text


def test_the_compiled_catalog_matches_its_source(tmp_path):
    compiled = tmp_path / "django.mo"
    subprocess.run(
        ["msgfmt", "--check", "-o", str(compiled), str(LOCALE / "django.po")], check=True
    )
    assert compiled.read_bytes() == (LOCALE / "django.mo").read_bytes(), (
        "django.mo is stale: run msgfmt --check -o django.mo django.po in " + str(LOCALE)
    )

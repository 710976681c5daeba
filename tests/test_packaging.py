"""The wheel a clean clone builds carries everything an instance needs, the built page included."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATIC = "modoboa_pro/virtualhosts/static/virtualhosts"


def test_the_wheel_ships_the_page_translations_and_migrations(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=REPO,
        check=True,
    )
    [wheel] = tmp_path.glob("modoboa_pro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(REPO)) for p in (REPO / STATIC).rglob("*") if p.is_file()}
    assert f"{STATIC}/remoteEntry.js" in shipped
    assert shipped <= names, sorted(shipped - names)
    for needed in (
        "modoboa_pro/virtualhosts/locale/fr/LC_MESSAGES/django.mo",
        "modoboa_pro/virtualhosts/migrations/0003_current_step.py",
        "modoboa_pro/virtualhosts/modo_extension.py",
    ):
        assert needed in names
    # Sources and tooling of the page stay out of the wheel: an instance needs no Node.
    assert not [n for n in names if n.startswith("frontend/") or "node_modules" in n]

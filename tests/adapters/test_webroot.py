"""Tests for the HTTP-01 webroot adapter."""

from __future__ import annotations

import os

import pytest

from modoboa_pro.virtualhosts.adapters import webroot
from modoboa_pro.virtualhosts.errors import InvalidToken, VirtualHostError

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def test_publish_token_world_readable(tmp_path):
    root = tmp_path / "webroot"
    old = os.umask(0o077)  # a worker with a strict umask must still publish readable files
    try:
        path = webroot.publish_token(root, TOKEN, f"{TOKEN}.thumbprint")
    finally:
        os.umask(old)
    assert path == root / ".well-known" / "acme-challenge" / TOKEN
    assert path.read_text() == f"{TOKEN}.thumbprint"
    assert os.stat(path).st_mode & 0o777 == 0o644
    for directory in (root, root / ".well-known", path.parent):
        assert os.stat(directory).st_mode & 0o777 == 0o755
    assert sorted(p.name for p in path.parent.iterdir()) == [TOKEN]


def test_publish_token_overwrites(tmp_path):
    webroot.publish_token(tmp_path, TOKEN, "one")
    path = webroot.publish_token(tmp_path, TOKEN, "two")
    assert path.read_text() == "two"


def test_remove_token(tmp_path):
    path = webroot.publish_token(tmp_path, TOKEN, "content")
    webroot.remove_token(tmp_path, TOKEN)
    assert not path.exists()
    webroot.remove_token(tmp_path, TOKEN)  # already gone: fine
    webroot.remove_token(tmp_path / "never-created", TOKEN)


@pytest.mark.parametrize(
    "token", ["", "../x", "a/b", "a.b", "..", "a b", "a\x00b", "a\n", "é", "x" * 257]
)
def test_bad_tokens_are_refused(tmp_path, token):
    with pytest.raises(InvalidToken) as info:
        webroot.publish_token(tmp_path, token, "content")
    assert isinstance(info.value, VirtualHostError)
    with pytest.raises(InvalidToken):
        webroot.remove_token(tmp_path, token)
    assert list(tmp_path.iterdir()) == []

"""HTTP-01 challenge files under the webroot nginx serves on port 80."""

from __future__ import annotations

import re
from pathlib import Path

from .. import constants
from ..errors import InvalidToken, StorageError
from .files import atomic_write, ensure_dir

CHALLENGE_SUBPATH = (".well-known", "acme-challenge")

# RFC 8555 tokens are base64url; anything else could escape the directory.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _token_path(webroot: Path, token: str) -> Path:
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise InvalidToken(
            f"Refusing ACME challenge token {token!r}: tokens are base64url "
            "(letters, digits, '-' and '_'). The CA sent something unexpected; retry later."
        )
    return Path(webroot).joinpath(*CHALLENGE_SUBPATH, token)


def publish_token(webroot: Path, token: str, content: str) -> Path:
    """Write the key authorization for ``token`` where the CA will fetch it."""
    path = _token_path(webroot, token)
    # Each level is world-traversable: nginx workers run as an unprivileged user.
    directory = Path(webroot)
    ensure_dir(directory, constants.WEBROOT_DIR_MODE)
    for part in CHALLENGE_SUBPATH:
        directory = ensure_dir(directory / part, constants.WEBROOT_DIR_MODE)
    atomic_write(path, content.encode("utf-8"), constants.PUBLIC_FILE_MODE)
    return path


def remove_token(webroot: Path, token: str) -> None:
    """Delete a published challenge file; a missing one is fine."""
    path = _token_path(webroot, token)
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise StorageError(
            f"Cannot remove the challenge file {path}: {err.strerror}. It is harmless "
            "but should be deleted by hand.",
        ) from err


class WebrootPublisher:
    """Publishes HTTP-01 key authorizations in one webroot (the ACME adapter's seam)."""

    def __init__(self, webroot: Path) -> None:
        self.webroot = Path(webroot)

    def publish(self, token: str, content: str) -> None:
        publish_token(self.webroot, token, content)

    def remove(self, token: str) -> None:
        remove_token(self.webroot, token)

"""HTTP-01 challenge files under the webroot nginx serves on port 80."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .. import constants
from ..errors import InvalidToken, StorageError
from .files import atomic_write, ensure_dir

CHALLENGE_SUBPATH = (".well-known", "acme-challenge")

# RFC 8555 tokens are base64url; anything else could escape the directory.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _check_token(token: str) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise InvalidToken(
            f"Refusing ACME challenge token {token!r}: tokens are base64url "
            "(letters, digits, '-' and '_'). The CA sent something unexpected; retry later."
        )
    return token


def _token_path(webroot: Path, token: str) -> Path:
    return Path(webroot).joinpath(*CHALLENGE_SUBPATH, _check_token(token))


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


class TokenLedger:
    """The tokens a host's runs published and have not removed yet, in one private file.

    The webroot is shared by every host, and a worker killed mid-order never runs its
    cleanup: the ledger says which leftover tokens are this host's, so its next run
    (holding the host's lock, so no live order of its own) removes exactly those.
    """

    def __init__(self, directory: Path, hostname: str) -> None:
        # A fixed-length name: the ledger adds no length limit to hostnames.
        digest = hashlib.sha256(hostname.encode("ascii")).hexdigest()[:32]
        self.directory = Path(directory)
        self.path = self.directory / digest

    def tokens(self) -> list[str]:
        try:
            text = self.path.read_text("ascii")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeError) as err:
            raise StorageError(f"Cannot read the challenge ledger {self.path}: {err}.") from err
        return [t for t in text.split() if _TOKEN_RE.fullmatch(t)]

    def _save(self, tokens: list[str]) -> None:
        if not tokens:
            self.path.unlink(missing_ok=True)
            return
        ensure_dir(self.directory, constants.PRIVATE_DIR_MODE)
        data = "".join(f"{t}\n" for t in tokens).encode("ascii")
        atomic_write(self.path, data, constants.PRIVATE_FILE_MODE)

    def clear(self) -> None:
        self._save([])

    def add(self, token: str) -> None:
        self._save([*self.tokens(), _check_token(token)])

    def discard(self, token: str) -> None:
        self._save([t for t in self.tokens() if t != token])


def sweep_leftovers(webroot: Path, ledger: TokenLedger) -> list[str]:
    """Remove the tokens a killed run of this host left in the webroot; return them."""
    left = ledger.tokens()
    for token in left:
        remove_token(webroot, token)
    if left:
        ledger.clear()
    return left


class WebrootPublisher:
    """Publishes HTTP-01 key authorizations in one webroot (the ACME adapter's seam).

    With a ledger, each token is recorded before it is written and forgotten after it
    is removed, so no crash can leave an unrecorded token.
    """

    def __init__(self, webroot: Path, ledger: TokenLedger | None = None) -> None:
        self.webroot = Path(webroot)
        self.ledger = ledger

    def publish(self, token: str, content: str) -> None:
        if self.ledger is not None:
            self.ledger.add(token)
        publish_token(self.webroot, token, content)

    def remove(self, token: str) -> None:
        remove_token(self.webroot, token)
        if self.ledger is not None:
            self.ledger.discard(token)

"""What the mail adapters share: the SNI entries, their commands, files put back on failure.

``postfix.py`` and ``dovecot.py`` each own one file (the SNI map, the ``local_name``
include) and install it the way ``nginx.py`` installs a site: written atomically,
checked by the service's own tool, the previous content put back when it refuses.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import constants
from ..errors import ConfigurationError, MailError, MailReloadFailed, StorageError
from .files import put_back, safe_hostname

# Lines of a command's output quoted in an operator's message: the end says why.
QUOTED_LINES = 3
HEADER = "# Written by modoboa_pro (Virtual hosts): do not edit, every mail deploy rewrites it.\n"


@dataclass(frozen=True)
class SniEntry:
    """One mail host name and the files of its certificate, as the services load them."""

    hostname: str
    fullchain: Path
    privkey: Path

    def __post_init__(self) -> None:
        safe_hostname(self.hostname)  # never a name that could break out of a config line
        for path in (self.fullchain, self.privkey):
            if not Path(path).is_absolute() or any(c.isspace() for c in str(path)):
                raise ConfigurationError(
                    f"The certificate path {path!r} of {self.hostname} cannot go into a mail "
                    "service's configuration (it must be absolute, without spaces): fix the "
                    "storage path in Settings > Virtual hosts."
                )


def quote(output: str) -> str:
    """The last lines a command printed, on one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return "; ".join(lines[-QUOTED_LINES:]) or "(no output)"


def run(argv: Sequence[str], *, what: str, setting: str, timeout: float) -> tuple[int, str]:
    """Run ``argv`` (from settings, never a shell); return its exit code and output."""
    argv = [str(arg) for arg in argv]
    if not argv:
        raise ConfigurationError(f"{setting} is empty; set it to the {what} command.")
    try:
        done = subprocess.run(  # argv from settings, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise ConfigurationError(
            f"Cannot run the {what} command {argv[0]!r}: {err.strerror}. Fix {setting}."
        ) from err
    except subprocess.TimeoutExpired as err:
        raise MailError(
            f"The {what} command {' '.join(argv)} did not finish within {timeout:g} s. "
            "It will be retried.",
            output=(err.output or b"").decode("utf-8", "replace"),
        ) from err
    return done.returncode, done.stdout.decode("utf-8", "replace")


def read(path: Path) -> bytes | None:
    """A file's content, None when absent."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise MailError(f"Cannot read {path}: {err.strerror}.") from err


def install(path: Path, data: bytes | None) -> None:
    """Atomically make ``path`` hold ``data`` (None removes it)."""
    try:
        put_back(Path(path), data, constants.PUBLIC_FILE_MODE)
    except (OSError, StorageError) as err:
        raise MailError(f"Cannot write {path}: {err}. Check the directory and its rights.") from err


def check_dir(path: Path, setting: str, what: str) -> None:
    if not Path(path).parent.is_dir():
        raise ConfigurationError(
            f"The directory {Path(path).parent} of the {what} does not exist: create it, or "
            f"fix {setting}."
        )


def reload(argv: Sequence[str], *, what: str, setting: str, program: str, timeout: float) -> str:
    """Run a service's reload command; a failure says the service keeps what it served."""
    code, output = run(argv, what=what, setting=setting, timeout=timeout)
    if code != 0:
        raise MailReloadFailed(
            f"{what} failed (exit {code}): {quote(output)}. {program} keeps serving the "
            "previous certificates; check that it is running.",
            output=output,
        )
    return output

"""Real Postfix and Dovecot on loopback, each with its own configuration and spool in a
work directory: the system's services and /etc are never touched.

Each runs in the foreground as our child (Postfix's ``master -d``, ``dovecot -F``) and
is stopped by its PID. The plugin's files (the SNI map, the ``local_name`` include)
live in the work directory, included the way docs/mail.md asks operators to.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from modoboa_pro.testing import pki
from modoboa_pro.testing.servers import HarnessError, ManagedProcess, _tcp_open, free_port
from modoboa_pro.virtualhosts.adapters import dovecot as dovecot_adapter
from modoboa_pro.virtualhosts.adapters import postfix as postfix_adapter

# The accounts Debian's packages create: Postfix refuses to run its daemons as root.
POSTFIX_USER = "postfix"
DOVECOT_USER = "dovecot"
DOVECOT_LOGIN_USER = "dovenull"
# Name every default certificate carries: a handshake for an unknown name gets it.
DEFAULT_NAME = "default.invalid"


def _which(name: str, fallback: str) -> str:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or fallback


def traversable_dir(prefix: str) -> Path:
    """A fresh directory the services' unprivileged users can traverse (pytest's temporary
    directories are private to root: Postfix's daemons could not reach their queue)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class _OwnDir(ManagedProcess):
    """Runs in a traversable directory of its own (removed on stop) unless given one."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._owned = workdir is None
        super().__init__(workdir or traversable_dir(f"modoboa-pro-{self.name}-"))

    def stop(self) -> None:
        super().stop()
        if self._owned and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)


def _count(path: Path, marker: str) -> int:
    try:
        return path.read_text(errors="replace").count(marker)
    except FileNotFoundError:
        return 0


class PostfixServer(_OwnDir):
    """Postfix's master with its own config dir, queue and data dirs, on free loopback
    ports: smtp (25), submission (587, STARTTLS) and submissions (465, implicit TLS)."""

    name = "postfix"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.config_dir = self.workdir / "conf"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.sni_map = self.workdir / "sni" / "modoboa-virtualhosts-sni"
        self.maillog = self.workdir / "maillog"
        self.ports = {"smtp": free_port(), "submission": free_port(), "submissions": free_port()}
        self.postfix_command = [_which("postfix", "/usr/sbin/postfix")]
        self.postmap_command = [_which("postmap", "/usr/sbin/postmap")]
        self.master = "/usr/lib/postfix/sbin/master"

    def prepare(self) -> None:
        for directory in (self.config_dir, self.queue_dir, self.data_dir, self.sni_map.parent):
            directory.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam(POSTFIX_USER)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        cert, key = pki.make_self_signed_leaf(self.config_dir, [DEFAULT_NAME])
        (self.config_dir / "main.cf").write_text(
            f"""# Written by modoboa_pro.testing.PostfixServer
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = {POSTFIX_USER}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {DEFAULT_NAME}
mydestination =
maillog_file = {self.maillog}
maillog_file_prefixes = {self.workdir}
smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_security_level = may
# The one line docs/mail.md asks for:
{postfix_adapter.main_cf_line(self.sni_map)}
"""
        )
        p = self.ports
        (self.config_dir / "master.cf").write_text(
            f"""# Written by modoboa_pro.testing.PostfixServer
127.0.0.1:{p["smtp"]} inet n - n - - smtpd
127.0.0.1:{p["submission"]} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt
127.0.0.1:{p["submissions"]} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
postlog unix-dgram n - n - 1 postlogd
proxymap unix - - n - - proxymap
anvil unix - - n - 1 anvil
tlsmgr unix - - n 1000? 1 tlsmgr
"""
        )
        if not self.sni_map.exists():  # the map main.cf names must exist before the plugin's
            self.sni_map.write_text("")
        self._postfix_tool([*self.postmap_command, "-c", str(self.config_dir), str(self.sni_map)])
        # Creates the queue's subdirectories with their owners and modes.
        self._postfix_tool([*self.postfix_command, "-c", str(self.config_dir), "check"])
        (self.queue_dir / "pid" / "master.pid").unlink(missing_ok=True)

    def _postfix_tool(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")

    def command(self) -> list[str]:
        return [self.master, "-c", str(self.config_dir), "-d"]

    def ready(self) -> bool:
        return (self.queue_dir / "pid" / "master.pid").exists() and all(
            _tcp_open("127.0.0.1", port) for port in self.ports.values()
        )

    def reloads(self) -> int:
        """How many times ``postfix reload`` reached the master."""
        return _count(self.maillog, "]: reload -- version")

    def log_tails(self) -> str:
        return f"{super().log_tails()}\n--- {self.maillog} ---\n" + "\n".join(
            self.maillog.read_text(errors="replace").splitlines()[-30:]
            if self.maillog.exists()
            else []
        )


class DovecotServer(_OwnDir):
    """Dovecot with its own base_dir, state_dir and log, on free loopback ports: imap (143),
    imaps (993), pop3 (110), pop3s (995); the plugin's include read with ``!include_try``."""

    name = "dovecot"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.config = self.workdir / "dovecot.conf"
        self.include = self.workdir / "sni" / "modoboa-virtualhosts-sni.conf"
        self.base_dir = self.workdir / "run"
        self.log = self.workdir / "dovecot-info.log"
        self.ports = {
            "imap": free_port(),
            "imaps": free_port(),
            "pop3": free_port(),
            "pop3s": free_port(),
        }
        self.dovecot_command = [_which("dovecot", "/usr/sbin/dovecot")]
        self.doveconf_command = [_which("doveconf", "/usr/bin/doveconf")]
        self.doveadm_command = [_which("doveadm", "/usr/bin/doveadm")]

    def prepare(self) -> None:
        for directory in (self.base_dir, self.workdir / "state", self.include.parent):
            directory.mkdir(parents=True, exist_ok=True)
        cert, key = pki.make_self_signed_leaf(self.workdir, [DEFAULT_NAME])
        p = self.ports
        self.config.write_text(
            f"""# Written by modoboa_pro.testing.DovecotServer
base_dir = {self.base_dir}
state_dir = {self.workdir}/state
instance_name = modoboa-pro-test-{os.getpid()}-{p["imap"]}
log_path = {self.log}
protocols = imap pop3
listen = 127.0.0.1
default_internal_user = {DOVECOT_USER}
default_login_user = {DOVECOT_LOGIN_USER}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={DOVECOT_USER} gid={DOVECOT_USER} home={self.workdir}/home
}}
service imap-login {{
  inet_listener imap {{
    port = {p["imap"]}
  }}
  inet_listener imaps {{
    port = {p["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p["pop3"]}
  }}
  inet_listener pop3s {{
    port = {p["pop3s"]}
    ssl = yes
  }}
}}
# The one line docs/mail.md asks for:
{dovecot_adapter.include_line(self.include)}
"""
        )

    def command(self) -> list[str]:
        return [*self.dovecot_command, "-F", "-c", str(self.config)]

    def ready(self) -> bool:
        return all(_tcp_open("127.0.0.1", port) for port in self.ports.values())

    def reloads(self) -> int:
        """How many times Dovecot reloaded its configuration (SIGHUP from doveadm reload)."""
        return _count(self.log, "SIGHUP received - reloading configuration")

    def log_tails(self) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-30:] if self.log.exists() else []
        return f"{super().log_tails()}\n--- {self.log} ---\n" + "\n".join(tail)


def plugin_settings(pf: PostfixServer, dv: DovecotServer) -> dict[str, object]:
    """The plugin's ``VIRTUALHOSTS_MAIL_*`` settings pointing at these two servers."""
    return {
        "VIRTUALHOSTS_MAIL_SERVICES": ["postfix", "dovecot"],
        "VIRTUALHOSTS_MAIL_POSTFIX_SNI_MAP": str(pf.sni_map),
        "VIRTUALHOSTS_MAIL_POSTFIX_CONFIG_DIR": str(pf.config_dir),
        "VIRTUALHOSTS_MAIL_POSTFIX_COMMAND": pf.postfix_command,
        "VIRTUALHOSTS_MAIL_POSTMAP_COMMAND": pf.postmap_command,
        "VIRTUALHOSTS_MAIL_DOVECOT_INCLUDE": str(dv.include),
        "VIRTUALHOSTS_MAIL_DOVECOT_CONFIG": str(dv.config),
        "VIRTUALHOSTS_MAIL_DOVECOT_COMMAND": dv.dovecot_command,
        "VIRTUALHOSTS_MAIL_DOVECONF_COMMAND": dv.doveconf_command,
        "VIRTUALHOSTS_MAIL_DOVEADM_COMMAND": dv.doveadm_command,
        "VIRTUALHOSTS_MAIL_VERIFY_PORTS": {**pf.ports, **dv.ports},
    }

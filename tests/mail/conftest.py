"""Real Postfix and Dovecot (module scope), and a real privileged worker deploying to them.

The servers run with their own configuration and spool in temporary directories, on free
loopback ports, and read the plugin's files through the one line each that docs/mail.md
asks operators for. The worker is a real `rqworker privileged` process: it reads the mail
hosts from the test database and the mail settings from its environment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import django_rq
import pytest

from modoboa_pro.testing.mail import DovecotServer, PostfixServer, plugin_settings
from modoboa_pro.virtualhosts import constants, queueing
from modoboa_pro.virtualhosts.adapters import dovecot, postfix

from ..conftest import Chain, start_privileged_worker, stop_by_pid

SETTINGS_ENV = "MODOBOA_PRO_TEST_MAIL_SETTINGS"


@pytest.fixture(scope="module")
def postfix_server() -> Iterator[PostfixServer]:
    server = PostfixServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[DovecotServer]:
    server = DovecotServer().start()
    yield server
    server.stop()


def mail_settings(pf: PostfixServer, dv: DovecotServer) -> dict[str, Any]:
    """The plugin's mail settings pointing at these two servers, reloads waited for 30 s."""
    return {**plugin_settings(pf, dv), "VIRTUALHOSTS_RELOAD_TIMEOUT": 30}


@pytest.fixture(scope="module")
def mail_worker(
    postfix_server: PostfixServer,
    dovecot_server: DovecotServer,
    nginx_server,
    redis_server,
    django_db_setup,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """One real `rqworker privileged` process for the module (stopped by PID)."""
    os.environ[SETTINGS_ENV] = json.dumps(mail_settings(postfix_server, dovecot_server))
    log = tmp_path_factory.mktemp("mail-worker") / "privileged-worker.log"
    process = start_privileged_worker(log)
    try:
        queue = django_rq.get_queue(constants.QUEUE_PRIVILEGED)
        deadline = time.monotonic() + 30
        while not queueing.listening_workers(queue):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the privileged worker did not start"
            time.sleep(0.1)
        yield process
    finally:
        stop_by_pid(process)
        os.environ.pop(SETTINGS_ENV, None)


@dataclass
class Mail:
    """The chain plus the two mail servers."""

    chain: Chain
    postfix: PostfixServer
    dovecot: DovecotServer

    @property
    def ports(self) -> dict[str, int]:
        return {**self.postfix.ports, **self.dovecot.ports}

    def reloads(self) -> tuple[int, int]:
        return self.postfix.reloads(), self.dovecot.reloads()

    def map_text(self) -> str:
        return self.postfix.sni_map.read_text()

    def include_text(self) -> str:
        return self.dovecot.include.read_text() if self.dovecot.include.exists() else ""


def reset(pf: PostfixServer, dv: DovecotServer) -> None:
    """Empty the plugin's files and reload both services: the next test starts clean."""
    postfix.install_map(
        pf.sni_map,
        "",
        config_dir=pf.config_dir,
        postmap=pf.postmap_command,
        postfix=pf.postfix_command,
    )
    postfix.reload(pf.config_dir, pf.postfix_command)
    dv.include.unlink(missing_ok=True)
    dovecot.reload(dv.config, dv.doveadm_command)


@pytest.fixture
def mail(
    chain: Chain,
    settings,
    postfix_server: PostfixServer,
    dovecot_server: DovecotServer,
    mail_worker: Any,
) -> Iterator[Mail]:
    """The chain in privileged mode, the mail settings pointing at the two servers."""
    assert mail_worker.poll() is None, "the privileged worker died"
    for name, value in mail_settings(postfix_server, dovecot_server).items():
        setattr(settings, name, value)
    settings.VIRTUALHOSTS_RELOAD_MODE = "privileged"
    yield Mail(chain, postfix_server, dovecot_server)
    reset(postfix_server, dovecot_server)

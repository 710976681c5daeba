"""Challenge tokens of a run that died before its cleanup are removed by the host's next run."""

from __future__ import annotations

import stat

import pytest

from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.adapters import preflight, probe, webroot
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain
from .test_failures import http_get

pytestmark = pytest.mark.chain


def tokens_on_disk(chain: Chain) -> set[str]:
    directory = chain.storage.joinpath(constants.WEBROOT_DIRNAME, *webroot.CHALLENGE_SUBPATH)
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_tokens_left_by_a_killed_run_are_gone_after_the_next_success(chain: Chain, monkeypatch):
    hostname = "crashed.example.test"
    # Another host's order in flight: its token must survive our host's cleanup.
    other = webroot.WebrootPublisher(
        chain.storage / constants.WEBROOT_DIRNAME,
        webroot.TokenLedger(chain.storage / constants.CHALLENGES_DIRNAME, "busy.example.test"),
    )
    other.publish("live-token-of-another-host", "live.thumbprint")

    # The first run dies after the CA validated the name, before its cleanup ran (SIGKILL
    # skips every `finally`): the removals of the CA's tokens never happen.
    remove = webroot.WebrootPublisher.remove

    def keep_ca_tokens(self: webroot.WebrootPublisher, token: str) -> None:
        if token.startswith((probe.PROBE_TOKEN_PREFIX, preflight.CANARY_PREFIX)):
            remove(self, token)

    with monkeypatch.context() as patch:
        patch.setattr(webroot.WebrootPublisher, "remove", keep_ca_tokens)
        host = VirtualHost.objects.create(hostname=hostname)
        chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    leftovers = tokens_on_disk(chain) - {"live-token-of-another-host"}
    assert len(leftovers) == 1
    [token] = leftovers
    assert http_get(chain, hostname, f"/.well-known/acme-challenge/{token}").status_code == 200
    ledger = webroot.TokenLedger(chain.storage / constants.CHALLENGES_DIRNAME, hostname)
    assert ledger.tokens() == [token]
    assert stat.S_IMODE(ledger.path.stat().st_mode) == constants.PRIVATE_FILE_MODE
    assert stat.S_IMODE(ledger.directory.stat().st_mode) == constants.PRIVATE_DIR_MODE

    # The next run of the host (here a renewal; a retry does the same) removes it.
    services.renew_now(host)
    chain.drain()
    host.refresh_from_db()
    assert host.status == constants.STATUS_ACTIVE, host.last_error
    assert tokens_on_disk(chain) == {"live-token-of-another-host"}
    assert http_get(chain, hostname, f"/.well-known/acme-challenge/{token}").status_code == 404
    assert ledger.tokens() == [] and not ledger.path.exists()
    # A normal run records and forgets its tokens itself.
    assert other.ledger is not None and other.ledger.tokens() == ["live-token-of-another-host"]

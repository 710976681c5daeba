"""No key material and no challenge token in logs, alarms, the API or the host's history.

The API's answers are read whole (list, every detail, the summary, Modoboa's alarms), as
the Virtual hosts page and the Modoboa Pro slot receive them: the page shows nothing else.
"""

from __future__ import annotations

import json
import logging

import pytest

from modoboa_pro.virtualhosts import constants, services
from modoboa_pro.virtualhosts.adapters import webroot
from modoboa_pro.virtualhosts.models import VirtualHost

from ..conftest import Chain

pytestmark = pytest.mark.chain


def api_answers() -> str:
    """Every answer the page and the admin's tools read, whole, as a SuperAdmin gets them."""
    from modoboa.core.models import User
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(User.objects.get(username="admin"))
    answers = []
    for url in ["/api/v2/virtualhosts/", "/api/v2/virtualhosts/summary/", "/api/v2/alarms/"]:
        answer = client.get(url)
        assert answer.status_code == 200, (url, answer.status_code)
        answers.append(answer.content.decode())
    for pk in VirtualHost.objects.values_list("pk", flat=True):
        answer = client.get(f"/api/v2/virtualhosts/{pk}/")
        assert answer.status_code == 200
        answers.append(answer.content.decode())
    return "\n".join(answers)


def test_keys_and_tokens_never_reach_logs_alarms_or_history(
    chain: Chain, caplog, monkeypatch, settings
):
    from modoboa.admin.models import Alarm

    caplog.set_level(logging.DEBUG, logger="modoboa.jobs")
    caplog.set_level(logging.DEBUG, logger="modoboa_pro")
    caplog.set_level(logging.INFO)  # everything else at an operator's usual level
    tokens: list[str] = []
    publish = webroot.WebrootPublisher.publish

    def recording_publish(self, token: str, content: str) -> None:
        tokens.append(token)
        tokens.append(content)  # the key authorization
        publish(self, token, content)

    monkeypatch.setattr(webroot.WebrootPublisher, "publish", recording_publish)
    host = VirtualHost.objects.create(hostname="quiet.example.test")
    chain.drain()
    services.renew_now(host)
    chain.drain()
    # A failure the CA reports (its problem quotes the challenge URL): past the pre-flight,
    # whose canaries the runs above published (and recorded here) too.
    settings.VIRTUALHOSTS_PREFLIGHT = False
    chain.dns.nxdomain.add("noisy.example.test")
    failing = VirtualHost.objects.create(hostname="noisy.example.test")
    chain.drain()
    failing.refresh_from_db()
    assert failing.status == constants.STATUS_FAILED
    assert len(tokens) >= 6  # three orders, each with its token and key authorization

    keys = [p.read_text() for p in chain.storage.rglob("*.pem") if "PRIVATE" in p.read_text()]
    assert keys
    key_lines = {line for key in keys for line in key.splitlines() if "PRIVATE" not in line}
    places = {
        "logs": "\n".join(r.getMessage() for r in caplog.records),
        "alarms": "\n".join(Alarm.objects.values_list("title", flat=True)),
        "api": api_answers(),
        "history": json.dumps(
            list(VirtualHost.objects.values("last_error"))
            + [{"m": m} for m in VirtualHost.objects.values_list("events__message", flat=True) if m]
        ),
    }
    for where, text in places.items():
        assert "PRIVATE KEY" not in text, where
        assert not [line for line in key_lines if line and line in text], where
        assert not [t for t in tokens if t in text], where
    # The CA's problem is reported, bounded: its type and detail, not the whole document.
    assert "could not validate noisy.example.test" in failing.last_error
    assert len(failing.last_error) < 1000
    # The API carries the hosts' history and errors (the checks above would be empty else).
    assert "could not validate noisy.example.test" in places["api"]
    assert "quiet.example.test" in places["api"] and "noisy.example.test" in places["api"]
